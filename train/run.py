"""Train, evaluate and draw the Flow Factorized VAE (the same program as the installed `eqx-ffvae`).

    python train/run.py                       # train the `quick` preset (embedded MNIST), eval, figures
    python train/run.py --preset mnist --data-dir ~/data/mnist
    python train/run.py eval --run runs/quick-…  # rewrite eval.json and figures of a saved run
    python train/run.py sample --run runs/quick-…
    python train/run.py --model beta-vae      # any method of the comparison, any preset
    python train/run.py compare --preset quick --seeds 3   # the paper's Table 1 layout: compare.md

`python train/run.py --help` lists the subcommands, presets, models and every option.
"""

from eqx_ffvae.cli import entry

if __name__ == "__main__":
    entry()
