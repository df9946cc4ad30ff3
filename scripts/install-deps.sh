#!/usr/bin/env bash
# Installs every system package and Rust target emberd needs on Debian.
# Idempotent: installs only what is missing. Runs apt as root, via sudo otherwise.
set -euo pipefail

packages=(
  qemu-system-x86   # the QEMU backend
  protobuf-compiler # protoc, for the agent protocol's generated code
  gcc libc6-dev     # the linker Rust uses
  mmdebstrap        # language-pack root file systems
  squashfs-tools    # mksquashfs
  xz-utils lz4 zstd # unpacking kernels
  cpio              # inspecting initramfs images
  python3 nodejs    # the agent tests run both interpreters on the host
  python3-venv      # the Python test environment (SDK, schemathesis, MCP client)
  ca-certificates
)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

missing=()
for package in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
  if [ "$status" != "install ok installed" ]; then
    missing+=("$package")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq </dev/null
  as_root apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" </dev/null
else
  echo "setup: system packages present"
fi

# Package lists are needed to fetch the kernel package even when nothing was missing.
policy="$(apt-cache policy linux-image-cloud-amd64 2>/dev/null || true)"
if ! grep -q "Candidate: [0-9]" <<<"$policy"; then
  echo "setup: refreshing apt package lists"
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq </dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is missing: install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi

target=x86_64-unknown-linux-musl
installed_targets="$(rustup target list --installed 2>/dev/null || true)"
if grep -qx "$target" <<<"$installed_targets"; then
  echo "setup: Rust target $target present"
elif command -v rustup >/dev/null; then
  echo "setup: adding the Rust target $target"
  rustup target add "$target"
else
  echo "setup: the Rust target $target is missing and rustup is not installed (https://rustup.rs)" >&2
  exit 1
fi

if cargo nextest --version >/dev/null 2>&1; then
  echo "setup: cargo-nextest present"
else
  echo "setup: installing cargo-nextest"
  cargo install cargo-nextest --locked </dev/null
fi

# The unprivileged user QEMU drops to (`-runas`) when the daemon runs as root.
vmm_user=emberd-vmm
if id -u "$vmm_user" >/dev/null 2>&1; then
  echo "setup: system user $vmm_user present"
else
  echo "setup: creating the system user $vmm_user (VMMs run as it)"
  as_root useradd --system --no-create-home --shell /usr/sbin/nologin "$vmm_user" </dev/null
fi
