// bittorrent-dht (webtorrent's, npm) nodes on loopback for peerkit's interop tests.
// Usage: node dht_agent.mjs COUNT BOOTSTRAP_HOST:PORT
// Starts COUNT nodes on 127.0.0.1 joined through BOOTSTRAP (never a public router), prints
// {"ready": [ports]}, then takes JSON lines on stdin:
//   {"cmd": "get", "target": HEX, "salt": HEX}  -> {"got": {"k": HEX, "seq": N, "v": HEX} | null}
//   {"cmd": "put", "seed": HEX, "v": HEX, "seq": N, "salt": HEX} -> {"put": TARGET_HEX, "nodes": N}
// Values are byte strings (v is their hex).
import crypto from 'node:crypto'
import readline from 'node:readline'
import DHT from 'bittorrent-dht'
import { keys, verify } from './ed25519.mjs'

const [count, bootstrap] = [Number(process.argv[2]), process.argv[3]]

const nodes = []
for (let i = 0; i < count; i++) {
  const known = [bootstrap, ...nodes.map((n) => `127.0.0.1:${n.address().port}`)]
  const dht = new DHT({ bootstrap: known, verify, host: '127.0.0.1' })
  await new Promise((resolve) => dht.listen(0, '127.0.0.1', resolve))
  await new Promise((resolve) => (dht.ready ? resolve() : dht.once('ready', resolve)))
  nodes.push(dht)
}
console.log(JSON.stringify({ ready: nodes.map((n) => n.address().port) }))

const lines = readline.createInterface({ input: process.stdin })
for await (const line of lines) {
  const command = JSON.parse(line)
  const dht = nodes[command.node || 0]
  if (command.cmd === 'get') {
    const salt = Buffer.from(command.salt, 'hex')
    const target = Buffer.from(command.target, 'hex')
    const got = await new Promise((resolve, reject) =>
      dht.get(target, { salt, cache: false }, (err, res) => (err ? reject(err) : resolve(res))))
    const out = got ? { k: got.k.toString('hex'), seq: got.seq, v: Buffer.from(got.v).toString('hex') } : null
    console.log(JSON.stringify({ got: out }))
  } else if (command.cmd === 'put') {
    const { priv, pub } = keys(Buffer.from(command.seed, 'hex'))
    const opts = {
      k: pub,
      v: Buffer.from(command.v, 'hex'),
      seq: command.seq,
      salt: Buffer.from(command.salt, 'hex'),
      sign: (buf) => crypto.sign(null, buf, priv)
    }
    const result = await new Promise((resolve, reject) =>
      dht.put(opts, (err, hash, n) => (err ? reject(err) : resolve([hash, n]))))
    console.log(JSON.stringify({ put: result[0].toString('hex'), nodes: result[1] }))
  }
}
for (const dht of nodes) dht.destroy()
