#!/usr/bin/env bash
# Installs the system packages swift-dlm needs to build and test, when they are missing (Debian / Ubuntu).
set -euo pipefail
need=()
pkg-config --exists lmdb 2>/dev/null || need+=(liblmdb-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v make >/dev/null || need+=(make)
if ((${#need[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "swift-dlm needs: ${need[*]} (run: sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
