"""`python -m vae_pyro`: the commands, one line each; `python -m vae_pyro <command> args...` runs
`python -m vae_pyro.<command> args...` (also the `vae-pyro` script). Imports no torch."""

from vae_pyro.startup import main

if __name__ == "__main__":
    raise SystemExit(main())
