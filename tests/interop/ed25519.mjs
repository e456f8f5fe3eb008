// Ed25519 for the interop agents, with node's own crypto (bittorrent-dht takes verify and sign
// functions from its user).
import crypto from 'node:crypto'

const SPKI = Buffer.from('302a300506032b6570032100', 'hex')
const PKCS8 = Buffer.from('302e020100300506032b657004220420', 'hex')

// Whether sig is key's signature of message (false for a malformed key or signature).
export function verify (sig, message, key) {
  try {
    const pub = crypto.createPublicKey({ key: Buffer.concat([SPKI, key]), format: 'der', type: 'spki' })
    return crypto.verify(null, message, pub, sig)
  } catch {
    return false
  }
}

// The private key and the 32-byte public key of a 32-byte seed (a random one by default).
export function keys (seed = crypto.randomBytes(32)) {
  const priv = crypto.createPrivateKey({ key: Buffer.concat([PKCS8, seed]), format: 'der', type: 'pkcs8' })
  const spki = crypto.createPublicKey(priv).export({ format: 'der', type: 'spki' })
  return { priv, pub: spki.subarray(spki.length - 32) }
}
