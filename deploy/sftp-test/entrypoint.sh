#!/bin/sh
# Keys for the SFTP test site, made once into the shared volume /keys:
#   ssh_host_ed25519_key(.pub)  the server's host key (root only)
#   id_ed25519(.pub)            the client key fedgate logs in with (owned by CLIENT_UID)
#   known_hosts                 "sftp ssh-ed25519 AAAA..." for the sites' known_hosts option
set -eu
KEYS=${KEYS:-/keys}
HOST_NAME=${SFTP_HOST_NAME:-sftp}
CLIENT_UID=${CLIENT_UID:-10001}
SSH_ETC=${SSH_ETC:-/etc/ssh}
SFTP_USER=${SFTP_USER:-fedgate}
umask 077
[ -s "$KEYS/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C sftp-test-host -f "$KEYS/ssh_host_ed25519_key"
[ -s "$KEYS/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C fedgate -f "$KEYS/id_ed25519"
chown "$CLIENT_UID" "$KEYS/id_ed25519" "$KEYS/id_ed25519.pub"
chmod 0644 "$KEYS/id_ed25519.pub" "$KEYS/ssh_host_ed25519_key.pub"
install -m 0600 "$KEYS/ssh_host_ed25519_key" "$SSH_ETC/ssh_host_ed25519_key"
install -d -m 0755 "$SSH_ETC/authorized_keys"
install -m 0644 "$KEYS/id_ed25519.pub" "$SSH_ETC/authorized_keys/$SFTP_USER"
printf '%s %s\n' "$HOST_NAME" "$(cut -d' ' -f1,2 "$KEYS/ssh_host_ed25519_key.pub")" > "$KEYS/known_hosts.tmp"
chmod 0644 "$KEYS/known_hosts.tmp"
mv "$KEYS/known_hosts.tmp" "$KEYS/known_hosts"
exec /usr/sbin/sshd -D -e -f "${SSHD_CONFIG:-$SSH_ETC/sshd_config}"
