// The reference of peerkit's `python -m benchmarks dht`: a testnet of bittorrent-dht (webtorrent's,
// npm) nodes in this one process, on 127.0.0.1 only, joined to each other and to nothing else.
// Usage: node --expose-gc dht_bench_agent.mjs COUNT OPS DELAY_MS JITTER_MS LOSS SEED
// Once every node is ready, each datagram sent is dropped with probability LOSS or held back
// DELAY_MS +- JITTER_MS (uniform), as peerkit's in-memory network does for its own testnet.
// Then OPS rounds: a random node puts a BEP 44 mutable item (one of five keys, the next seq),
// another random node gets it. Prints one JSON line:
//   {"put_ms": [...], "get_ms": [...], "datagrams": [...], "stale": N, "missing": N,
//    "heap_per_node": BYTES}
// (datagrams: sent by any node, lost ones included, while each get ran).
import crypto from 'node:crypto'
import dgram from 'node:dgram'
import DHT from 'bittorrent-dht'
import { keys, verify } from './ed25519.mjs'

const [count, ops, delay, jitter, loss, seed] = process.argv.slice(2).map(Number)
const SALT = Buffer.from('peerkit-bench')

let state = seed >>> 0 || 1
function random () { // xorshift32: the same run for the same seed
  state ^= state << 13; state >>>= 0
  state ^= state >>> 17
  state ^= state << 5; state >>>= 0
  return state / 4294967296
}

let wan = false
let sent = 0
const send = dgram.Socket.prototype.send
dgram.Socket.prototype.send = function (...args) {
  sent++
  if (!wan) return send.apply(this, args)
  if (random() < loss) return
  setTimeout(() => { try { send.apply(this, args) } catch {} }, delay + (random() * 2 - 1) * jitter)
}

global.gc?.()
const heapBefore = process.memoryUsage().heapUsed
const nodes = []
async function start (bootstrap) {
  const dht = new DHT({ bootstrap, verify, host: '127.0.0.1' })
  await new Promise((resolve) => dht.listen(0, '127.0.0.1', resolve))
  await new Promise((resolve) => (dht.ready ? resolve() : dht.once('ready', resolve)))
  return dht
}
nodes.push(await start(false))
while (nodes.length < count) { // joined in batches, each through the first and three earlier ones
  const batch = []
  for (let i = 0; i < 25 && nodes.length + batch.length < count; i++) {
    const known = [0, ...[1, 2, 3].map(() => Math.floor(random() * nodes.length))]
    batch.push(start(known.map((j) => `127.0.0.1:${nodes[j].address().port}`)))
  }
  nodes.push(...await Promise.all(batch))
}
global.gc?.()
const heapPerNode = (process.memoryUsage().heapUsed - heapBefore) / count

wan = true
const owners = Array.from({ length: 5 }, keys)
const seqs = owners.map(() => 0)
const out = { put_ms: [], get_ms: [], datagrams: [], stale: 0, missing: 0, heap_per_node: heapPerNode }
for (let round = 0; round < ops; round++) {
  const which = round % owners.length
  const { priv, pub } = owners[which]
  const seq = ++seqs[which]
  const writer = nodes[Math.floor(random() * count)]
  const reader = nodes[Math.floor(random() * count)]
  const item = {
    k: pub, v: Buffer.from(`round ${round}`), seq, salt: SALT, sign: (buf) => crypto.sign(null, buf, priv)
  }
  let start = performance.now()
  await new Promise((resolve) => writer.put(item, () => resolve()))
  out.put_ms.push(performance.now() - start)
  const target = crypto.createHash('sha1').update(Buffer.concat([pub, SALT])).digest()
  start = performance.now()
  const before = sent
  const got = await new Promise((resolve) => reader.get(target, { salt: SALT, cache: false }, (err, res) => resolve(err ? null : res)))
  out.get_ms.push(performance.now() - start)
  out.datagrams.push(sent - before)
  if (!got) out.missing++
  else if (got.seq !== seq) out.stale++
}
console.log(JSON.stringify(out))
wan = false
for (const dht of nodes) dht.destroy()
