#!/usr/bin/env bash
# Creates the secrets a deployment needs, in deploy/secrets/ (or the folder given), without
# overwriting any that exist (--force regenerates the NATS passwords):
#   nats_<user>_password   a random password per NATS user (admin, poller, commander,
#                          recordings, app), read by the services through PBX_NATS_PASSWORD_FILE
#   nats-passwords.conf    their bcrypt hashes, included by deploy/nats/accounts.conf: the NATS
#                          configuration never holds a password in clear
#   <vendor secrets>       placeholders named in deploy/pbxbridge.toml: put the real ones there
# Needs a python3 with the `bcrypt` module (pip install bcrypt; choose it with PYTHON=...), or
# `htpasswd` (apache2-utils).
# deploy/secrets/ is git-ignored; deploy/secrets.example/ shows the layout.
set -euo pipefail
force=0
if [[ "${1:-}" == "--force" ]]; then force=1; shift; fi
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/secrets}"
mkdir -p "$out"
chmod 700 "$out"
umask 077

users=(admin poller commander recordings app)
vendor_secrets=(yemot_acme_password fonema_madrid_password ucontact_support_password swan_hq_api_key)

python="${PYTHON:-python3}"
random_password() { "$python" -c 'import secrets; print(secrets.token_urlsafe(32))'; }

bcrypt_hash() {  # stdin: the password; stdout: its bcrypt hash (cost 11)
  if "$python" -c 'import bcrypt' 2>/dev/null; then
    "$python" -c 'import sys, bcrypt; print(bcrypt.hashpw(sys.stdin.read().strip().encode(), bcrypt.gensalt(11)).decode())'
  elif command -v htpasswd >/dev/null; then
    htpasswd -niBC 11 x | cut -d: -f2-
  else
    echo "make-secrets.sh: need python3's bcrypt module (pip install bcrypt) or htpasswd (apache2-utils)" >&2
    exit 1
  fi
}

regenerated=0
for user in "${users[@]}"; do
  file="$out/nats_${user}_password"
  if [[ ! -s "$file" || $force == 1 ]]; then
    random_password > "$file"
    regenerated=1
  fi
done

conf="$out/nats-passwords.conf"
if [[ ! -s "$conf" || $regenerated == 1 ]]; then
  {
    echo "# bcrypt hashes of the NATS users' passwords (deploy/make-secrets.sh); included by accounts.conf"
    for user in "${users[@]}"; do
      hash="$(bcrypt_hash < "$out/nats_${user}_password")"
      upper="$(echo "$user" | tr '[:lower:]' '[:upper:]')"
      echo "PBX_NATS_${upper}_HASH: \"$hash\""
    done
  } > "$conf.tmp"
  mv "$conf.tmp" "$conf"
fi

for name in "${vendor_secrets[@]}"; do
  [[ -s "$out/$name" ]] || echo "REPLACE-ME-with-the-vendor-secret" > "$out/$name"
done

# Containers run as uid 10001 and compose bind-mounts each file alone: the files are readable,
# the folder stays private to you.
chmod 644 "$out"/*
echo "secrets in $out"
