#!/usr/bin/env bash
# Installs Debian packages, as root or through sudo: what ./dev needs and a fresh machine lacks.
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
