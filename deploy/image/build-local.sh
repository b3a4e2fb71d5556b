#!/usr/bin/env bash
# Builds Herald's runtime image FROM scratch with podman, from a binary
# built on this host, and checks it: the entrypoint runs `herald --version`
# and `herald serve --help` from the image's own filesystem (podman image
# mount + chroot: containers cannot run on these machines), it runs as a
# non-root user, and its size is reported.
#
#   deploy/image/build-local.sh BINARY [TAG]
set -euo pipefail
binary=${1:?usage: build-local.sh BINARY [TAG]}
tag=${2:-localhost/herald:local}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc/herald" "$root/etc/ssl/certs" "$root/tmp" \
         "$root/var/lib/herald"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/herald"
strip "$root/usr/local/bin/herald" 2>/dev/null || true
# The libraries it links (and the loader), at their paths.
ldd "$binary" | awk '/=> \// {print $3} /^\s*\/lib/ {print $1}' | sort -u | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# A non-root user, as distroless's nonroot.
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cp "$repo/config/herald.example.toml" "$root/etc/herald/herald.example.toml"
chown 65532:65532 "$root/var/lib/herald"
mkdir "$work/context"
tar --numeric-owner -C "$root" -cf "$work/context/rootfs.tar" .
cp "$here/Containerfile.scratch" "$work/context/Containerfile"
podman build --quiet --format docker -t "$tag" "$work/context" >/dev/null

user=$(podman image inspect --format '{{.Config.User}}' "$tag")
health=$(podman image inspect --format '{{join .Config.Healthcheck.Test " "}}' "$tag")
entry=$(podman image inspect --format '{{join .Config.Entrypoint " "}}' "$tag")
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image $tag: user $user, entrypoint $entry, health check '$health', $((size / 1024 / 1024)) MiB"
[ "$user" = "65532:65532" ] || { echo "the image runs as $user, not a non-root user" >&2; exit 1; }
mnt=$(podman image mount "$tag")
trap 'podman image unmount "$tag" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
# As the image's user would: the entrypoint from the image's filesystem.
chroot --userspec=65532:65532 "$mnt" $entry --version
chroot --userspec=65532:65532 "$mnt" $entry serve --help | head -3
[ "$(stat -c %u "$mnt/var/lib/herald")" = 65532 ] || { echo "/var/lib/herald is not the user's" >&2; exit 1; }
echo "image $tag: ok"
