#!/usr/bin/env python3
"""Captures the seed corpora of the fuzz targets from real devstream sessions over loopback.

Usage: capture-seeds.py DEVSTREAM [CORPUS_DIR]

Runs a few small sessions (migrations of a vfio-emu and a sim device with and without LZ4, a
file and a stdin transfer, a migration the destination refuses) through a recording TCP proxy,
then cuts what crossed the wire into each target's input format (see each target's header
comment) under CORPUS_DIR (default: corpus/ next to this script), replacing the captured seeds
there and keeping the reproducers of fixed bugs (regression-*). The committed seeds were made
with it; run it again after a wire format change:

    swift build --product devstream          # in the repository root
    Tests/Fuzz/capture-seeds.py .build/debug/devstream

Nothing here runs in CI: run.sh fuzzes from the committed seeds.
"""
import hashlib
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading

HEADER = 40
PREAMBLE = 64

# FrameType raw values (Sources/DSWire/Frame.swift).
DATA, STREAM_DATA, CHANNEL_END, END_OF_STREAM, ACK, ERROR, ACCEPT, REJECT, KEEPALIVE = range(1, 10)
DEVICE_SECTION, CONFIG_STATE, ITERATION_MARK, SWITCHOVER, END_OF_STATE, INIT_DATA_SENT = range(0x10, 0x16)
SWITCHOVER_ACK, LOAD_STATS, RESUMED, PING, PONG, LOADED, COMMIT, PAGES = range(0x16, 0x1E)
DATA_TYPES = {DATA, STREAM_DATA, PAGES}
LZ4_FLAG = 1

# The payloads target's selectors (ControlPayload in Sources/FuzzSupport).
(CHANNEL_END_P, TRANSFER_TOTALS_P, ERROR_MESSAGE_P, DEVICE_HEADER_P, DEVICE_TOTALS_P, SETUP_ACCEPT_P,
 LOAD_STATS_P, LOADED_P, RESUMED_P, DEVICE_DIGESTS_P, MIGRATION_SUMMARY_P) = range(11)


def control_kind(frame_type, migration):
    return {
        CHANNEL_END: CHANNEL_END_P,
        END_OF_STREAM: MIGRATION_SUMMARY_P if migration else TRANSFER_TOTALS_P,
        ACK: DEVICE_DIGESTS_P if migration else TRANSFER_TOTALS_P,
        ERROR: ERROR_MESSAGE_P, REJECT: ERROR_MESSAGE_P,
        ACCEPT: SETUP_ACCEPT_P if migration else None,
        DEVICE_SECTION: DEVICE_HEADER_P,
        END_OF_STATE: DEVICE_TOTALS_P, INIT_DATA_SENT: DEVICE_TOTALS_P,
        LOAD_STATS: LOAD_STATS_P, LOADED: LOADED_P, RESUMED: RESUMED_P,
    }.get(frame_type)


class Recorder:
    """A TCP proxy on 127.0.0.1 that forwards each connection to `target` and keeps both
    directions' bytes."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.connections = []  # [(to_receiver bytearray, to_sender bytearray)]
        self.threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            record = (bytearray(), bytearray())
            self.connections.append(record)
            for src, dst, buf in ((client, upstream, record[0]), (upstream, client, record[1])):
                t = threading.Thread(target=self._pump, args=(src, dst, buf), daemon=True)
                t.start()
                self.threads.append(t)

    @staticmethod
    def _pump(src, dst, buf):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                buf.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        for s in (dst,):
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        for t in self.threads:
            t.join(timeout=10)
        self.listener.close()


def run_session(devstream, receive_args, send_args, stdin=None):
    """Runs `devstream receive` and the sending command through a Recorder; returns its
    connections."""
    receiver = subprocess.Popen([devstream, "receive", "--listen", "127.0.0.1:0", "--timeout", "10s", "--insecure"] + receive_args,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = receiver.stdout.readline()
    assert line.startswith("listening on "), f"receiver said {line!r}"
    port = int(line.strip().rsplit(":", 1)[1])
    recorder = Recorder(port)
    sender = subprocess.run([devstream] + send_args + ["--to", f"127.0.0.1:{recorder.port}", "--timeout", "10s", "--insecure"],
                            input=stdin, capture_output=True, timeout=120)
    try:
        receiver.wait(timeout=30)
    except subprocess.TimeoutExpired:
        receiver.kill()
        receiver.wait()
    recorder.close()
    print(f"  sender exit {sender.returncode}, receiver exit {receiver.returncode}, "
          f"{len(recorder.connections)} connection(s)", file=sys.stderr)
    return recorder.connections


def frames(stream):
    """Splits bytes into (header, payload) frames; stops at a torn frame."""
    at = 0
    while at + HEADER <= len(stream):
        header = stream[at:at + HEADER]
        wire = struct.unpack_from("<I", header, 8)[0]
        if at + HEADER + wire > len(stream):
            break
        yield bytes(header), bytes(stream[at + HEADER:at + HEADER + wire])
        at += HEADER + wire


class Corpus:
    def __init__(self, root):
        self.root = root
        self.seen = set()
        self.counts = {}

    def add(self, target, name, data, limit=None):
        key = (target, hashlib.sha1(data).hexdigest())
        if key in self.seen:
            return
        count_key = (target, name)
        if limit is not None and self.counts.get(count_key, 0) >= limit:
            return
        self.seen.add(key)
        self.counts[count_key] = self.counts.get(count_key, 0) + 1
        os.makedirs(os.path.join(self.root, target), exist_ok=True)
        path = os.path.join(self.root, target, f"{name}-{self.counts[count_key]}")
        with open(path, "wb") as f:
            f.write(data)


def cut(corpus, session, connections):
    """Cuts one session's connections into seeds for every wire target."""
    migration = False
    channels = 1
    device_sizes = {}
    stream_pieces = {}  # device id -> [(sequence, bytes)]
    pages = []  # (-extents, bytes, name, seed): the tables with the most extents make the seeds
    for to_receiver, to_sender in connections:
        if len(to_receiver) >= PREAMBLE:
            preamble = bytes(to_receiver[:PREAMBLE])
            corpus.add("preamble", f"{session}", preamble)
            migration = preamble[44] == 2
            channels = struct.unpack_from("<H", preamble, 34)[0]
    for to_receiver, to_sender in connections:
        directions = []
        if len(to_receiver) >= PREAMBLE and to_receiver[:8] == b"DSTREAM\n":
            directions.append(("src", to_receiver[PREAMBLE:]))
        directions.append(("dst", to_sender))
        for side, stream in directions:
            for header, payload in frames(stream):
                ftype, flags, device = header[0], header[1], struct.unpack_from("<H", header, 2)[0]
                raw_length, wire_length = struct.unpack_from("<II", header, 4)
                position, checksum = struct.unpack_from("<QQ", header, 16)
                name = f"{session}-{side}-type{ftype:02x}"
                if ftype in DATA_TYPES:
                    corpus.add("frame-header", name, header, limit=2)
                    if flags & LZ4_FLAG:
                        if raw_length <= 1 << 20 and wire_length <= 16 << 10:
                            seed = struct.pack("<IQB", raw_length - 1, checksum, 0) + payload
                            corpus.add("lz4", name, seed, limit=3)
                    elif ftype == PAGES and device in device_sizes:
                        extents = struct.unpack_from("<H", payload, 0)[0]
                        pages.append((-extents, len(payload), name, struct.pack("<Q", device_sizes[device]) + payload))
                    elif ftype == STREAM_DATA:
                        stream_pieces.setdefault(device, []).append((position, payload))
                    continue
                corpus.add("frame-header", name, header + payload, limit=2)
                kind = control_kind(ftype, migration)
                if kind is not None:
                    corpus.add("payloads", f"{session}-{side}-p{kind}", bytes([kind, channels - 1]) + payload, limit=2)
                if ftype == DEVICE_SECTION and len(payload) >= 9:
                    device_sizes[device] = struct.unpack_from("<Q", payload, 1)[0]
    for _, _, name, seed in sorted(pages)[:3]:
        corpus.add("extent-table", name, seed)
    # An ordered device's stream, reassembled in sequence order: the vfio-stream target's input.
    for device, pieces in stream_pieces.items():
        size = device_sizes.get(device)
        if not migration or size is None:
            continue
        stream = b"".join(p for _, p in sorted(pieces))
        # A vfio-emu stream begins with its header record: kind 'H', offset, length 20, magic,
        # version, state size. The target makes a destination of (byte 0 % 16 + 1) x 4 KiB.
        if len(stream) >= 33 and stream[0] == 0x48:
            state_size = struct.unpack_from("<Q", stream, 25)[0]
            if state_size % 4096 == 0 and 1 <= state_size // 4096 <= 16:
                corpus.add("vfio-stream", f"{session}-dev{device}-whole", bytes([state_size // 4096 - 1, 0]) + stream)
                corpus.add("vfio-stream", f"{session}-dev{device}-pieces", bytes([state_size // 4096 - 1, 97]) + stream)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    devstream = os.path.abspath(sys.argv[1])
    root = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    work = tempfile.mkdtemp(prefix="ds-capture-")
    corpus = Corpus(tempfile.mkdtemp(prefix="ds-corpus-"))
    rng = random.Random(1)
    # A small file of text, zeros and noise: some chunks compress, some do not.
    image = os.path.join(work, "image.bin")
    with open(image, "wb") as f:
        f.write((b"DeviceStream moves device state between hosts. " * 200)[:8192])
        f.write(bytes(8192))
        f.write(bytes(rng.getrandbits(8) for _ in range(8192)))
        f.write(bytes(range(256)) * 32)

    emu, sim = "vfio-emu:size=8K", "sim:size=256K,chunk=4K"
    sessions = [
        # A migration with every kind of frame: an addressable (pages) and an ordered device.
        ("migrate-raw", ["--device", emu, "--device", sim],
         ["migrate", "--device", emu + ",dirty-rate=64K", "--device", sim + ",dirty-rate=4M,hot=50%",
          "--compression", "none", "--connections", "2", "--chunk-size", "16K", "--downtime-limit", "300ms",
          "--deadline", "20s"]),
        ("migrate-lz4", ["--device", emu, "--device", sim],
         ["migrate", "--device", emu + ",dirty-rate=64K", "--device", sim + ",dirty-rate=256K,profile=text",
          "--compression", "lz4", "--connections", "2", "--chunk-size", "8K", "--downtime-limit", "300ms",
          "--deadline", "20s"]),
        # A migration the destination refuses (its device is another size): error frames.
        ("migrate-refused", ["--device", "vfio-emu:size=16K"],
         ["migrate", "--device", emu, "--connections", "1", "--chunk-size", "4K"]),
        # Plain transfers: channel ends, totals, acks; offsets and sequence numbers.
        ("send-file", ["--output", os.path.join(work, "out.bin")],
         # 16 KiB chunks: the first is text and zero pages, so it goes packed (wire version 3).
         ["send", image, "--compression", "lz4", "--connections", "2", "--chunk-size", "16K"]),
        ("send-stdin", ["--output", os.path.join(work, "out2.bin")],
         ["send", "-", "--compression", "none", "--connections", "1", "--chunk-size", "4K"]),
    ]
    for name, receive_args, send_args in sessions:
        print(f"session {name}", file=sys.stderr)
        stdin = open(image, "rb").read()[:6000] if name == "send-stdin" else None
        cut(corpus, name, run_session(devstream, receive_args, send_args, stdin))

    # The text the CLI parsed in those sessions: device specs, sizes, durations.
    texts = [emu, sim, emu + ",dirty-rate=64K", sim + ",dirty-rate=4M,hot=50%", sim + ",dirty-rate=256K,profile=text",
             "vfio-emu:size=16K", "file:/var/tmp/image.bin", "16K", "8K", "4K", "300ms", "20s", "10s",
             "sim:size=1G,dirty-rate=64M,hot=10%,profile=mixed,seed=1,chunk=4K", "1.5G", "64M/s", "500us", "2m"]
    for i, text in enumerate(texts):
        corpus.add("specs", f"cli-{i}", text.encode())

    for target in sorted(os.listdir(corpus.root)):
        dst = os.path.join(root, target)
        # Captured seeds are replaced; reproducers of fixed bugs (regression-*) stay.
        if os.path.isdir(dst):
            for f in os.listdir(dst):
                if not f.startswith("regression-"):
                    os.remove(os.path.join(dst, f))
        shutil.copytree(os.path.join(corpus.root, target), dst, dirs_exist_ok=True)
        files = os.listdir(dst)
        size = sum(os.path.getsize(os.path.join(dst, f)) for f in files)
        print(f"{target}: {len(files)} seeds, {size} bytes", file=sys.stderr)
    shutil.rmtree(corpus.root)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
