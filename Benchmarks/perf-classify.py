#!/usr/bin/env python3
# Classifies perf samples of devstream's threads by end (sender, receiver; io_uring io-wq
# workers go to the end whose ring started them) and by what the stack is doing.
# Usage: perf record -a -g -e cpu-clock -F 1999 -- stream-bench ... --repeat 1
#        perf script -F comm,pid,tid,ip,sym,dso | Benchmarks/perf-classify.py [PID ...]
# With PIDs (process ids: the bench and its receive-child), only their threads count, so other
# devstream processes running at the same time stay out; without, threads are told by name.
import sys, re, collections
only = {int(a) for a in sys.argv[1:]}
end_of = {}  # tid -> 'send'/'recv'
samples = []
cur = None
for line in sys.stdin:
    if not line.strip():
        if cur: samples.append(cur)
        cur = None
        continue
    if not line.startswith((' ', '\t')):
        m = re.match(r'\s*(\S.*?)\s+(\d+)(?:/(\d+))?\s', line)
        # format: comm pid/tid ...
        parts = line.split()
        comm = parts[0]
        idtok = parts[1]
        if '/' in idtok: pid, tid = idtok.split('/')
        else: pid = tid = idtok
        cur = [comm, int(pid), int(tid), []]
    else:
        if cur is not None:
            t = line.strip().split(None, 1)
            if len(t) == 2: cur[3].append(t[1])
if cur: samples.append(cur)
if only: samples = [x for x in samples if x[1] in only]
tids = {}
for comm, pid, tid, st in samples:
    if comm.startswith('ds-send'): tids[tid] = 'sender'
    elif comm.startswith('ds-recv') or comm.startswith('ds-listen') or comm.startswith('ds-accept'): tids[tid] = 'receiver'
def classify(stack):
    s = ' '.join(stack)
    rules = [
        ('LZ4 compress', 'LZ4_compress'), ('LZ4 decompress', 'LZ4_decompress'), ('XXH3', 'libxxhash'), ('XXH3', 'XXH3'),
        ('tmpfs fallocate (zeroing)', 'shmem_fallocate'), ('tmpfs write (copy + page alloc)', 'shmem_file_write_iter'),
        ('tmpfs read (copy)', 'shmem_file_read_iter'), ('TCP send', 'tcp_sendmsg'), ('TCP recv', 'tcp_recvmsg'),
        ('page faults', 'exc_page_fault'), ('futex (write lock, wakeups)', 'futex'), ('softirq/loopback', 'do_softirq'), ('schedule/wakeup', 'schedule'), ('io_uring', 'io_'),
        ('page faults', 'exc_page_fault'), ('memcpy (user)', 'memmove'), ('memcpy (user)', 'memcpy'),
    ]
    for name, key in rules:
        if key in s: return name
    return 'other: ' + (stack[0] if stack else '?')
tot = collections.Counter(); by = collections.Counter()
for comm, pid, tid, st in samples:
    end = None
    if tid in tids: end = tids[tid]
    m = re.match(r'iou-wrk-(\d+)', comm)
    if m and int(m.group(1)) in tids: end = tids[int(m.group(1))] ; comm_kind = 'io-wq'
    if end is None: continue
    kind = 'io-wq worker' if m else 'ring thread'
    c = classify(st)
    tot[end] += 1
    by[(end, kind, c)] += 1
all_ = sum(tot.values())
print(f"samples: {all_} (sender {tot['sender']}, receiver {tot['receiver']})")
for (end, kind, c), n in sorted(by.items(), key=lambda x: (x[0][0], -x[1])):
    if n * 200 < all_: continue
    print(f"{end:9s} {kind:13s} {c:40s} {100*n/all_:5.1f}%")
