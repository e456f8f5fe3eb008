"""The BitTorrent Mainline DHT (BEP 5, BEP 32, BEP 44), for the Internet scope.

The codec and the KRPC state are sans-IO (:mod:`peerkit.dht.bencode`, :mod:`peerkit.dht.bep44`);
a UDP driver runs them.
"""
