"""Looking at what a dictionary found: a browser over every latent on the user's text.

`collect` reads the latents in one streaming pass (top-k contexts, reservoir samples,
histograms, token-latent sums), `effects` says what each latent does to the output (checked
by ablation) and which latents are its neighbours, `browser` writes the static site, and
`command` is `unweave features`."""
