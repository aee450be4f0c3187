#!/bin/sh
# Makes the secrets of the docker-compose stack (run once, in deploy/, after
# `docker compose build`):
#   .env                          FEDGATE_SECRET_KEY and the S3 test keys (mode 0600)
#   secrets/admin_password_hash   argon2id hash of a new random password of the
#                                 user "admin" (the password is printed once)
# Nothing is overwritten: delete .env and secrets/ first to start over.
set -eu
cd "$(dirname "$0")"
image=${FEDGATE_IMAGE:-fedgate:latest}
if [ -e .env ] || [ -e secrets/admin_password_hash ]; then
  echo "make-env: .env or secrets/admin_password_hash exists; delete them to start over" >&2
  exit 1
fi
rand() { head -c "$1" /dev/urandom | base64 | tr -d '\n/+='; }
password=$(rand 18)
hash=$(printf '%s\n' "$password" | docker run --rm -i --network none "$image" hash-password)
mkdir -p secrets
# the container user (uid 10001) reads the file through a bind mount: a hash, not a password
( umask 022 && printf '%s\n' "$hash" > secrets/admin_password_hash )
( umask 077 && {
    printf 'FEDGATE_SECRET_KEY=%s\n' "$(rand 32)"
    printf 'S3_ACCESS_KEY=fedgate\n'
    printf 'S3_SECRET_KEY=%s\n' "$(rand 24)"
  } > .env )
echo "make-env: wrote .env and secrets/admin_password_hash"
echo "make-env: user admin, password $password (shown once)"
