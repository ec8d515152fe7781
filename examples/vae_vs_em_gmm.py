"""VAE versus EM on a Gaussian mixture: what the exact posterior buys.

EM's E step sets q(z|x) = p(z|x), so its ELBO equals log p(x); a VAE's amortized Gaussian
q(z|x) leaves a gap. Prints the comparison table and writes the plots to --out.

    python examples/vae_vs_em_gmm.py [--quick] [--out runs/vae_vs_em]
"""

import argparse

from pyro_vae.compare import format_table, run_comparison, save_comparison


def main(quick=False, out="runs/vae_vs_em"):
    comp = run_comparison(None, n_components=3, n_samples=1000 if quick else 4000,
                          epochs=5 if quick else 150, num_samples=100 if quick else 1000, seed=0)
    print(format_table(comp.table))
    save_comparison(comp, out)
    print(f"plots in {out}")
    return comp


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--out", default="runs/vae_vs_em")
    a = parser.parse_args()
    main(a.quick, a.out)
