#!/usr/bin/env bash
# Install the external tools helixflow uses (Debian packages).
#   install-system-deps.sh run   what `helixflow run` calls: samtools, bcftools, tabix,
#                                Graphviz (the lineage picture),
#                                MEGAHIT, GROMACS (`make run`)
#   install-system-deps.sh test  those plus what only tests and benchmarks use: peer tools
#                                (fastp, minimap2, lighter, seqkit, prodigal), ART, Chromium
#                                + chromedriver, openssh (`make test`; the default)
# As root, installs what is missing; otherwise reports what is missing.
set -euo pipefail

set_name="${1:-test}"
# command -> Debian package
declare -A RUN=(
  [samtools]=samtools [bcftools]=bcftools [bgzip]=tabix [megahit]=megahit [gmx]=gromacs
  [dot]=graphviz
)
declare -A TEST_ONLY=(
  [seqkit]=seqkit [fastp]=fastp [minimap2]=minimap2 [lighter]=lighter [prodigal]=prodigal
  [art_illumina]=art-nextgen-simulation-tools
  [chromium]=chromium [chromedriver]=chromium-driver
  [sshd]=openssh-server [ssh]=openssh-client [rsync]=rsync
)
case "$set_name" in
  run) what="the run's tools" ;;
  test) what="the run's, tests' and benchmarks' tools" ;;
  *) echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac
missing=()
for cmd in "${!RUN[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${RUN[$cmd]}")
done
if [ "$set_name" = test ]; then
  for cmd in "${!TEST_ONLY[@]}"; do
    # sshd lives in /usr/sbin, which a non-root PATH may lack
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${TEST_ONLY[$cmd]}")
  done
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing $what with apt-get: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing system packages ($what): ${missing[*]}" >&2
  echo "install with: sudo apt-get install ${missing[*]}" >&2
  [ "$set_name" = run ] && exit 1
  echo "(tests that need them fail under CI=true)" >&2
fi
