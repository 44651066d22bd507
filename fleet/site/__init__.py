"""The site's own infrastructure, written by the operator CLI: its PKI (CA, identities, CRL), the site
broker's TLS configuration and ACL, and the Mosquitto bridge to a central broker."""
