"""The bases a description can use for the activations at a site, all with one interface.

A basis sends its parameters once (`params`: tensors, quantised and entropy-coded; plus
`spec_bits` for what names it, such as an analytic basis's frequencies) and per example a
code (`encode`: (n, width), zero meaning inactive), from which `decode` rebuilds the
activations. Only what the decoder needs is a parameter: a dictionary's encoder is how the
sender finds the code, not part of the description.
"""

from __future__ import annotations

import torch

from unweave.dictionaries.sae import SAE


class Basis:
    name: str = "basis"
    width: int = 0
    k: int | None = None  # latents per example the basis was built for (dictionaries)
    binary: bool = False  # codes are 0/1: active or not, no values to send
    codes_sent: bool = True  # False: the codes follow from each example's input by the basis's rule
    spec_bits: float = 0.0  # bits naming the basis beyond its parameter tensors
    reads: str | None = None  # the site `encode` reads, when not the described one (a transcoder's MLP input)

    def params(self) -> dict[str, torch.Tensor]:
        return {}

    def atoms(self) -> torch.Tensor | None:
        """The directions the basis writes with, one per row (None: not a set of atoms)."""
        return None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def entries(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The nonzero entries (rows, units, values) of encode(x): all a code sends."""
        return nonzero_entries(self.encode(x))

    def decode(
        self, codes: torch.Tensor, params: dict[str, torch.Tensor], inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The activations from the codes and the parameters; `inputs` are the rows of the site
        `reads` (a skip transcoder's decoder reads its MLP's input, which the network computes)."""
        raise NotImplementedError

    def label(self) -> str:
        return self.name


def nonzero_entries(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, units, values) of the nonzero entries of an (n, units) code."""
    rows, units = codes.nonzero(as_tuple=True)
    return rows, units, codes[rows, units]


class Neurons(Basis):
    """The standard basis: each coordinate of the activation is a unit."""

    name = "neurons"

    def __init__(self, d: int):
        self.width = d

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def atoms(self) -> torch.Tensor:
        """A signed coordinate writes +e_j or -e_j, its sign saying which: 2d atoms."""
        eye = torch.eye(self.width, dtype=torch.float64)
        return torch.cat([eye, -eye])

    def decode(
        self, codes: torch.Tensor, params: dict[str, torch.Tensor], inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        return codes


class Linear(Basis):
    """x ~ mean + codes @ directions, codes by least squares. `send_directions` False for an
    analytic basis whose directions follow from `spec_bits` worth of choices."""

    def __init__(
        self,
        name: str,
        mean: torch.Tensor,
        directions: torch.Tensor,
        send_directions: bool = True,
        spec_bits: float = 0.0,
    ):
        self.name, self.mean, self.directions = name, mean.double(), directions.double()
        self.width, self.send_directions, self.spec_bits = len(directions), send_directions, spec_bits
        self._pinv = torch.linalg.pinv(self.directions)

    def params(self) -> dict[str, torch.Tensor]:
        out = {"mean": self.mean}
        if self.send_directions:
            out["directions"] = self.directions
        return out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) @ self._pinv

    def decode(
        self, codes: torch.Tensor, params: dict[str, torch.Tensor], inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        directions = params.get("directions", self.directions)
        return params["mean"] + codes.double() @ directions


def pca(x: torch.Tensor, rank: int) -> Linear:
    """The top `rank` principal directions of x (rows), with its mean."""
    mean = x.double().mean(0)
    _, _, vh = torch.linalg.svd(x.double() - mean, full_matrices=False)
    return Linear("pca", mean, vh[:rank])


class Analytic(Linear):
    """An analytic basis: the code of each example is a stated function of its input (for
    modular addition, cos and sin of w_k (a + b) at the key frequencies), so no code is sent;
    the description is `spec_bits` naming the functions plus one direction per function
    (least squares on the activations) and the mean, which are sent. `send_codes=True` makes
    it an ordinary basis on those directions, codes by least squares, sent like PCA's."""

    def __init__(self, name: str, functions: torch.Tensor, x: torch.Tensor, spec_bits: float, send_codes: bool = False):
        functions = functions.double()
        mean = x.double().mean(0)
        directions = torch.linalg.lstsq(functions, x.double() - mean).solution
        super().__init__(name, mean, directions, send_directions=True, spec_bits=spec_bits)
        self.functions, self.codes_sent = functions, send_codes

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.codes_sent:
            return super().encode(x)
        if len(x) != len(self.functions):
            raise ValueError(f"this analytic basis has codes for {len(self.functions)} examples, got {len(x)}")
        return self.functions


CODES = ("encoder", "pursuit")
SPARSE_BELOW = 0.05  # codes with fewer nonzero entries than this are decoded as a sparse matrix


class Dictionary(Basis):
    """A trained SAE or transcoder: the decoder sends W_dec and b_dec; the codes are its
    encoder's latents, or with `codes="pursuit"` the sparse code that non-negative orthogonal
    matching pursuit finds for the decoder (the encoder is not part of the description, so
    any way of finding a code is fair; an SAE's linear encoder misses features that share an
    example when they are superposed). A transcoder describes its MLP's output; its encoder
    reads the MLP's input, the site named by `reads`. A skip transcoder also sends W_skip:
    its decoder adds input @ W_skip, the input being what the network computes at `reads`
    (the receiver runs the network, and the layers before the MLP are not replaced)."""

    def __init__(self, sae: SAE, name: str | None = None, codes: str = "encoder", reads: str | None = None):
        if codes not in CODES:
            raise ValueError(f"codes must be one of {CODES}, got {codes!r}")
        if sae.cfg.skip and codes != "encoder":
            raise ValueError("a skip transcoder's codes come from its encoder (pursuit would need the skip's residual)")
        if sae.cfg.kind == "transcoder" and codes == "encoder" and reads is None:
            raise ValueError("a transcoder's encoder reads its MLP's input: give reads= that site")
        self.sae, self.width, self.codes = sae, sae.cfg.n_latents, codes
        self.reads = reads if codes == "encoder" else None
        self.k = sae.cfg.k if sae.cfg.architecture in ("topk", "batchtopk") else None
        self.name = name or f"{sae.cfg.kind}-{sae.cfg.architecture}"

    def params(self) -> dict[str, torch.Tensor]:
        sent = {"W_dec": self.sae.W_dec.detach(), "b_dec": self.sae.b_dec.detach()}
        return {**sent, "W_skip": self.sae.W_skip.detach()} if self.sae.cfg.skip else sent

    def atoms(self) -> torch.Tensor:
        return self.sae.W_dec.detach()

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.codes == "pursuit":
            return pursuit(x.double() - self.sae.b_dec.double(), self.sae.W_dec.detach().double())
        return self.sae.encode(x.to(self.sae.W_dec.dtype))

    @torch.no_grad()
    def entries(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        top = getattr(self.sae.arch, "top", None)
        if self.codes != "encoder" or top is None:
            return super().entries(x)
        # a TopK encoder names each example's k latents: no (n, width) code to build and search
        indices, values = top(self.sae, self.sae.pre_activations(x.to(self.sae.W_dec.dtype)))
        rows = torch.arange(len(x)).unsqueeze(1).expand_as(indices)
        active = values != 0
        return rows[active], indices[active], values[active]

    def decode(
        self, codes: torch.Tensor, params: dict[str, torch.Tensor], inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        codes = codes.to(params["W_dec"].dtype)
        if codes.is_sparse or (codes.dim() == 2 and (codes != 0).double().mean() < SPARSE_BELOW):
            # k of thousands: gather, not multiply
            sparse = codes if codes.is_sparse else codes.to_sparse()
            decoded = torch.sparse.mm(sparse, params["W_dec"]) + params["b_dec"]
        else:
            decoded = codes @ params["W_dec"] + params["b_dec"]
        if "W_skip" not in params:
            return decoded
        if inputs is None:
            raise ValueError(f"a skip transcoder decodes from its input too: give the rows of {self.reads!r}")
        return decoded + inputs.to(params["W_skip"].dtype) @ params["W_skip"]


class LinearMap(Basis):
    """A module replaced by one linear map of its input, x_out ~ inputs @ W + b (the baseline
    for transcoders: a skip transcoder's skip is such a map). Nothing is sent per example:
    the input is what the network computes at `reads`. W and b are the sender's least-squares
    fit (`LinearFit`)."""

    name = "linear map of the input"
    codes_sent = False

    def __init__(self, reads: str, weight: torch.Tensor, bias: torch.Tensor):
        self.reads, self.weight, self.bias = reads, weight.double(), bias.double()

    def params(self) -> dict[str, torch.Tensor]:
        return {"W": self.weight, "b": self.bias}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 0, dtype=torch.float64)

    def decode(
        self, codes: torch.Tensor, params: dict[str, torch.Tensor], inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        if inputs is None:
            raise ValueError(f"a linear map decodes from its input: give the rows of {self.reads!r}")
        return inputs.double() @ params["W"] + params["b"]


class LinearFit:
    """Running sums for the least-squares map x_in -> x_out, over batches (a store streamed once)."""

    def __init__(self):
        self.n, self.sums = 0, None

    def add(self, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        x_in, x_out = x_in.double(), x_out.double()
        batch = (x_in.sum(0), x_out.sum(0), x_in.T @ x_in, x_in.T @ x_out)
        self.sums = batch if self.sums is None else tuple(a + b for a, b in zip(self.sums, batch, strict=True))
        self.n += len(x_in)

    def solve(self, reads: str) -> LinearMap:
        s_in, s_out, s_in_in, s_in_out = self.sums
        m_in, m_out = s_in / self.n, s_out / self.n
        cov_in = s_in_in / self.n - torch.outer(m_in, m_in)
        cross = s_in_out / self.n - torch.outer(m_in, m_out)
        weight = torch.linalg.pinv(cov_in, hermitian=True) @ cross  # minimum-norm where cov_in is singular
        return LinearMap(reads, weight, m_out - m_in @ weight)


class LookupTable(Basis):
    """One latent per example of the dataset (the degenerate dictionary): the parameters are
    the examples' activations themselves, each code says which row."""

    name = "lookup table"
    binary = True

    def __init__(self, x: torch.Tensor):
        self.rows, self.width = x, len(x)

    def params(self) -> dict[str, torch.Tensor]:
        return {"rows": self.rows}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.rows.shape or not torch.equal(x, self.rows):
            raise ValueError("a lookup table describes exactly the dataset it was built from")
        return torch.eye(len(x), dtype=x.dtype)

    def decode(
        self, codes: torch.Tensor, params: dict[str, torch.Tensor], inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        return codes @ params["rows"]


@torch.no_grad()
def pursuit(x: torch.Tensor, atoms: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """Non-negative orthogonal matching pursuit: for every row of x, add the atom (row of
    `atoms`) most positively correlated with the residual, refit the values on the chosen
    atoms by least squares, drop atoms whose value turns negative; `steps` (default the
    dimension) times or until nothing correlates positively. Returns (n, n_atoms) codes."""
    n, d = x.shape
    steps = steps or d
    codes = torch.zeros(n, len(atoms), dtype=x.dtype)
    chosen = torch.zeros(n, len(atoms), dtype=torch.bool)
    residual = x.clone()
    for _ in range(steps):
        corr = (residual @ atoms.T).masked_fill(chosen, -torch.inf)
        best, index = corr.max(1)
        grow = best > 1e-12 * x.norm(dim=1).clamp(min=1e-30)
        if not grow.any():
            break
        chosen[grow.nonzero().squeeze(1), index[grow]] = True
        codes = _refit(x, atoms, chosen)
        chosen &= codes > 0
        residual = x - codes @ atoms
    return codes


def _refit(x: torch.Tensor, atoms: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Least-squares values of each row on its chosen atoms, negative ones set to zero."""
    # normal equations on the masked Gram matrix; unchosen atoms get an identity row, value 0
    gram = atoms @ atoms.T
    mask = chosen[:, :, None] & chosen[:, None, :]
    eye = torch.eye(len(atoms), dtype=x.dtype)
    system = torch.where(mask, gram, 0) + torch.where(chosen[:, :, None], 0, eye)
    rhs = torch.where(chosen, x @ atoms.T, 0)
    values = torch.linalg.solve(system + 1e-10 * eye, rhs)
    return torch.where(chosen, values, 0).clamp(min=0)
