"""`python -m unweave ...`, which is how torchrun starts it: `torchrun --nproc-per-node 2 -m unweave sae train ...`."""

from unweave.cli import main

main()
