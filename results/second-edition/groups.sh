# shellcheck shell=bash
# The second edition's rows, in the groups run.sh trains them (sourced by run.sh and finalize.sh).
groups=(
  "ffvae poflow poflow-authors"
  "ffvae-authors ffvae-sde ffvae-rollout-kl0"
  "vae beta-vae factorvae slowvae tvae"
  "ffvae-weak ffvae-group"
  "ffvae-no-flow-kl ffvae-no-hj ffvae-rollout ffvae-0.1"
)
