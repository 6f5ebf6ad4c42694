#!/usr/bin/env bash
# Install the external tools the tests and benchmarks use (Debian packages).
# As root (CI), installs what is missing; otherwise reports what is missing.
set -euo pipefail

# command -> Debian package
declare -A PKG=(
  [bgzip]=tabix [samtools]=samtools [bcftools]=bcftools [seqkit]=seqkit
  [fastp]=fastp [minimap2]=minimap2 [lighter]=lighter [prodigal]=prodigal
  [megahit]=megahit [art_illumina]=art-nextgen-simulation-tools [gmx]=gromacs
  [chromium]=chromium [chromedriver]=chromium-driver
  [sshd]=openssh-server [ssh]=openssh-client [rsync]=rsync
)
missing=()
for cmd in "${!PKG[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${PKG[$cmd]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing system packages (tests that need them will fail under CI=true): ${missing[*]}" >&2
  echo "install with: sudo apt-get install ${missing[*]}" >&2
fi
