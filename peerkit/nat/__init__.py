"""Reaching a node behind a home router: port mapping (PCP, RFC 6887; NAT-PMP, RFC 6886; UPnP IGD)."""
