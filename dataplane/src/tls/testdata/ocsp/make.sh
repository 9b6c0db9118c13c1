#!/usr/bin/env bash
# Regenerates the stapled-OCSP fixtures of dataplane/src/tls/ocsp.rs with the openssl CLI
# (made with OpenSSL 3.0). Keys live only in a temporary folder: the tests need none.
#
# Certificates are valid 2025-01-01 .. 2035-12-31 (fixed, via `openssl ca -startdate`).
# `openssl ocsp` stamps thisUpdate with the clock, so the responses are valid from the day
# this script runs; the tests check at 2030-01-01, so rerun it before then.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

start=20250101000000Z
end=20351231235959Z

# A minimal `openssl ca` setup: fixed dates and serials, extensions from the named section.
ca_sign() { # ca_sign CSR CA_CERT CA_KEY SERIAL_HEX EXT_SECTION OUT [-selfsign]
    local csr=$1 cacert=$2 cakey=$3 serial=$4 ext=$5 out=$6
    shift 6
    rm -rf "$work/db" && mkdir "$work/db" && : >"$work/db/index.txt"
    echo "$serial" >"$work/db/serial"
    openssl ca -batch -notext -config "$work/ca.cnf" -extensions "$ext" -md sha256 \
        -startdate "$start" -enddate "$end" -cert "$cacert" -keyfile "$cakey" \
        -in "$csr" -out "$out" "$@" 2>/dev/null
}

cat >"$work/ca.cnf" <<CNF
[ca]
default_ca = test_ca
[test_ca]
dir = $work/db
database = \$dir/index.txt
serial = \$dir/serial
new_certs_dir = \$dir
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
organizationName = optional
[ca_ext]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:ocsp-leaf.example.test
[responder_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = OCSPSigning
[no_eku_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
CNF

csr() { # csr KEY SUBJECT OUT
    openssl req -new -key "$1" -subj "$2" -out "$3"
}

# The leaf's CA: ECDSA P-256. A second, unrelated CA: RSA 2048.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ca.key" 2>/dev/null
csr "$work/ca.key" "/O=Loupe Test/CN=Loupe OCSP Test CA" "$work/ca.csr"
ca_sign "$work/ca.csr" /dev/null "$work/ca.key" 01 ca_ext ca.pem -selfsign
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/other_ca.key" 2>/dev/null
csr "$work/other_ca.key" "/O=Loupe Test/CN=Other Test CA" "$work/other_ca.csr"
ca_sign "$work/other_ca.csr" /dev/null "$work/other_ca.key" 01 ca_ext other_ca.pem -selfsign

# The leaf (RSA 2048, serial 0x1001) and the CA's delegated responders (RSA 2048): one with
# extendedKeyUsage OCSPSigning, one without.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/leaf.key" 2>/dev/null
csr "$work/leaf.key" "/CN=ocsp-leaf.example.test" "$work/leaf.csr"
ca_sign "$work/leaf.csr" ca.pem "$work/ca.key" 1001 leaf_ext leaf.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/responder.key" 2>/dev/null
csr "$work/responder.key" "/O=Loupe Test/CN=Loupe OCSP Responder" "$work/responder.csr"
ca_sign "$work/responder.csr" ca.pem "$work/ca.key" 2001 responder_ext "$work/responder.pem"
csr "$work/responder.key" "/O=Loupe Test/CN=Loupe Responder Without EKU" "$work/no_eku.csr"
ca_sign "$work/no_eku.csr" ca.pem "$work/ca.key" 2002 no_eku_ext "$work/no_eku.pem"

# index.txt lines: status, expiry, revocation time[,reason], serial, file, subject.
leaf_subject="/CN=ocsp-leaf.example.test"
printf 'V\t351231235959Z\t\t1001\tunknown\t%s\n' "$leaf_subject" >"$work/good.txt"
printf 'R\t351231235959Z\t260301120000Z,keyCompromise\t1001\tunknown\t%s\n' "$leaf_subject" >"$work/revoked.txt"
printf 'V\t351231235959Z\t\t1002\tunknown\t/CN=another.example.test\n' >"$work/other.txt"

respond() { # respond INDEX SIGNER_CERT SIGNER_KEY OUT [more openssl ocsp options]
    local index=$1 signer=$2 key=$3 out=$4
    shift 4
    openssl ocsp -index "$index" -CA ca.pem -rsigner "$signer" -rkey "$key" -issuer ca.pem \
        -no_nonce -respout "$out" "$@" >/dev/null
}

respond "$work/good.txt" ca.pem "$work/ca.key" good_by_issuer.der -cert leaf.pem -ndays 3650
# The delegated responder names itself by key hash and signs with sha384WithRSAEncryption.
respond "$work/good.txt" "$work/responder.pem" "$work/responder.key" good_by_responder.der \
    -cert leaf.pem -ndays 3650 -resp_key_id -rmd sha384
respond "$work/good.txt" ca.pem "$work/ca.key" good_sha256_certid.der -sha256 -cert leaf.pem -ndays 3650
respond "$work/good.txt" ca.pem "$work/ca.key" good_no_next_update.der -cert leaf.pem
respond "$work/revoked.txt" ca.pem "$work/ca.key" revoked.der -cert leaf.pem -ndays 3650
respond "$work/other.txt" ca.pem "$work/ca.key" unknown.der -cert leaf.pem -ndays 3650
respond "$work/other.txt" ca.pem "$work/ca.key" other_serial.der -serial 0x1002 -ndays 3650
respond "$work/good.txt" other_ca.pem "$work/other_ca.key" signed_by_other_ca.der -cert leaf.pem -ndays 3650
respond "$work/good.txt" "$work/no_eku.pem" "$work/responder.key" signed_without_eku.der \
    -cert leaf.pem -ndays 3650
respond "$work/good.txt" ca.pem "$work/ca.key" expired.der -cert leaf.pem -nmin 1

# The certificates in DER, as the tests load them.
for pem in ca leaf other_ca; do
    openssl x509 -in "$pem.pem" -outform DER -out "$pem.der"
    rm "$pem.pem"
done
ls -l
