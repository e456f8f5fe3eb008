"""Reaching a node behind a home router: port mapping (NAT-PMP, RFC 6886)."""
