#!/usr/bin/env python3
"""Writes src/audit/testdata/merkle_vectors.json: RFC 6962 Merkle tree test vectors.

An independent implementation, straight from the definitions of RFC 6962 §2.1 (MTH, PATH,
PROOF), used to check src/audit/merkle.cc. The leaves are those of the Certificate
Transparency reference tests (RFC 6962 era), extended deterministically to 70 leaves.
Corrupted proofs (a flipped byte, a missing or extra hash, a wrong index, a swapped
root, a rewritten history) come with "valid": false.
Run: python3 tools/gen-merkle-vectors.py > src/audit/testdata/merkle_vectors.json
"""
import hashlib
import json

def sha(b):
    return hashlib.sha256(b).digest()

def leaf(d):
    return sha(b"\x00" + d)

def node(l, r):
    return sha(b"\x01" + l + r)

def k_of(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k

def mth(d):
    n = len(d)
    if n == 0:
        return sha(b"")
    if n == 1:
        return leaf(d[0])
    k = k_of(n)
    return node(mth(d[:k]), mth(d[k:]))

def path(m, d):
    n = len(d)
    if n == 1:
        return []
    k = k_of(n)
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]

def subproof(m, d, b):
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = k_of(n)
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]

base = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f"]
leaves = base + [("leaf-%d" % i).encode() for i in range(len(base), 70)]
h = lambda b: b.hex()

def flip(p, i):
    p = list(p)
    b = bytearray(p[i])
    b[0] ^= 1
    p[i] = bytes(b)
    return p

out = {"leaves": [h(x) for x in leaves],
       "roots": [{"size": n, "root": h(mth(leaves[:n]))} for n in range(0, len(leaves) + 1)],
       "inclusion": [], "consistency": []}
for n in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 64, 70]:
    root = mth(leaves[:n])
    for m in sorted({0, 1, n // 2, n - 2, n - 1} & set(range(n))):
        p = path(m, leaves[:n])
        lh = leaf(leaves[m])
        out["inclusion"].append({"index": m, "size": n, "leaf_hash": h(lh), "root": h(root),
                                 "proof": [h(x) for x in p], "valid": True})
        bad = []
        if p:
            bad.append(("flipped", m, n, flip(p, len(p) - 1), root))
            bad.append(("truncated", m, n, p[:-1], root))
        bad.append(("extra", m, n, p + [sha(b"extra")], root))
        bad.append(("wrong-index", (m + 1) % n if n > 1 else 1, n, p, root))
        # (No "wrong size" case: a proof for (i, n) can also verify as (i, n') against the
        # same root, e.g. leaf 0 of 3 as leaf 0 of 4. A root is tied to its size by the
        # signed tree head, not by the inclusion proof; RFC 9162 §2.1.3.2 is as it is.)
        bad.append(("wrong-root", m, n, p, sha(b"not the root")))
        for name, i, s, pp, r in bad:
            out["inclusion"].append({"index": i, "size": s, "leaf_hash": h(lh), "root": h(r),
                                     "proof": [h(x) for x in pp], "valid": False, "case": name})
for n in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 64, 70]:
    new_root = mth(leaves[:n])
    for m in sorted({1, 2, 3, 4, n // 2, n - 1, n} & set(range(1, n + 1))):
        old_root = mth(leaves[:m])
        p = subproof(m, leaves[:n], True) if m < n else []
        out["consistency"].append({"old_size": m, "new_size": n, "old_root": h(old_root),
                                   "new_root": h(new_root), "proof": [h(x) for x in p],
                                   "valid": True})
        if not p:
            continue
        bad = [("flipped", m, n, flip(p, 0), old_root, new_root),
               ("truncated", m, n, p[:-1], old_root, new_root),
               ("extra", m, n, p + [sha(b"extra")], old_root, new_root),
               ("rewritten-history", m, n, p, sha(b"another history"), new_root),
               ("wrong-new-root", m, n, p, old_root, sha(b"not the root"))]
        if m + 1 < n:
            bad.append(("wrong-old-size", m + 1, n, p, old_root, new_root))
        for name, a, b, pp, r1, r2 in bad:
            out["consistency"].append({"old_size": a, "new_size": b, "old_root": h(r1),
                                       "new_root": h(r2), "proof": [h(x) for x in pp],
                                       "valid": False, "case": name})
print(json.dumps(out, indent=1))
