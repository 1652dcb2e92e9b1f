import Testing
import Synchronization
import Glibc
import DSRing
import DSWire
import DSCodec
@testable import DSTransport
import DSTestSupport
import DSSupport

/// One memory budget per session, and overall deadlines per phase.
@Suite(.serialized) struct BoundsTests {
    /// The budget covers every channel: 64 channels of 16 MiB chunks (about 2 GiB) are over the
    /// 256 MiB default, 64 of 1 MiB over TLS fit; raising the budget lets the big one through.
    @Test func oneBudgetPerSession() throws {
        #expect(TransferOptions().memoryBudget == 256 << 20)
        var o = options(connections: 64, chunk: 16 << 20)
        let need = TransferOptions.sessionMemory(connections: 64, chunkSize: 16 << 20, tls: false)
        #expect(need > 2 << 30 && need < 3 << 30)
        let e = #expect(throws: TransferError.self) { try o.validate() }
        #expect(e?.code == .usage && e?.message.contains("over the session's memory budget of 256 MiB") == true, "\(e?.message ?? "")")
        #expect(e?.hint?.contains("--memory-budget") == true && e?.message.contains("--") == false)
        o.memoryBudget = 3 << 30
        #expect(throws: Never.self) { try o.validate() }
        var tls = options(connections: 64, chunk: 1 << 20)
        tls.security = SecurityOptions(.psk(key: [UInt8](repeating: 1, count: 32)))
        #expect(throws: Never.self) { try tls.validate() }
        // TLS's record buffers count: 64 channels of 1 MiB over TLS are over a 160 MiB budget,
        // in plaintext they are not.
        tls.memoryBudget = 160 << 20
        #expect(throws: TransferError.self) { try tls.validate() }
        tls.security = nil
        #expect(throws: Never.self) { try tls.validate() }
        o.memoryBudget = 0
        #expect(throws: TransferError.self) { try o.validate() }
    }

    /// The estimate is what a channel really allocates: its pool, to the byte.
    @Test(arguments: [4 << 10, 64 << 10, 1 << 20, 16 << 20])
    func theEstimateIsTheAllocation(chunk: Int) throws {
        let pool = try BufferPool(slots: 2, payloadCapacity: WireLimits.payloadCapacity(chunkSize: chunk), headroom: FrameHeader.size)
        #expect(TransferOptions.channelMemory(chunkSize: chunk, tls: false) == pool.byteCount + (16 << 10))
        #expect(TransferOptions.channelMemory(chunkSize: chunk, tls: true)
                == pool.byteCount + (16 << 10) + SecureStream.sendCapacity + SecureStream.receiveCapacity)
    }

    /// A sender whose preamble asks for more than the receiver's budget is refused before the
    /// receiver allocates anything, and told why; the receiver waits on, and its timeout error
    /// says what it refused.
    @Test func theReceiverAppliesItsOwnBudget() throws {
        let src = tmpPath("budget-src"), out = tmpPath("budget-out")
        defer { unlink(src); unlink(out) }
        writeFile(src, testData(100_000, seed: 5))
        var receiverOptions = options(connections: 1, timeout: .seconds(2))
        receiverOptions.memoryBudget = 8 << 20
        var senderOptions = options(connections: 8, chunk: 1 << 20)
        senderOptions.memoryBudget = 1 << 30
        let (sent, received) = try transfer(source: src, output: out, options: senderOptions, receiverOptions: receiverOptions,
                                            acceptTimeout: .seconds(1))
        #expect(!sent.completed && sent.error?.code == .rejected, "\(sent.error?.message ?? "")")
        #expect(sent.error?.message.contains("over the session's memory budget of 8 MiB here") == true, "\(sent.error?.message ?? "")")
        #expect(!received.completed && received.error?.code == .timeout, "\(received.error?.message ?? "")")
        #expect(received.error?.message.contains("memory budget") == true && received.error?.hint?.contains("--memory-budget") == true,
                "\(received.error?.description ?? "")")
        #expect(!exists(out) && !exists(out + ".partial"))
    }

    /// A phase's deadline holds however many keepalives arrive; the stall timeout alone
    /// restarts with each one.
    @Test func aPhaseDeadlineIgnoresKeepalives() throws {
        let (a, b) = socketPair()
        defer { close(b) }
        let ring = try Ring(entries: 8)
        let ch = try Channel(index: 0, connection: Connection(fd: a), ring: ring, chunkSize: 64 << 10, compression: false,
                             acceleration: 1, timeout: .seconds(1))
        // Margins for a loaded machine (or TSan): keepalives every 50 ms against a 1 s stall
        // timeout, so only a pacer starved for a whole second could let the stall fire first.
        let stop = Atomic<Bool>(false)
        let pacer = try OSThread(name: "ds-test-keepalive") {
            while !stop.load(ordering: .relaxed) {
                sendRaw(b, controlFrame(.keepalive))
                usleep(50_000)
            }
        }
        defer { stop.store(true, ordering: .relaxed); pacer.join() }
        let start = Monotonic.now
        let e = #expect(throws: TransferError.self) { _ = try ch.receive(before: Monotonic.now + .milliseconds(2500), phase: "waiting for the commit") }
        let took = Monotonic.now - start
        #expect(e?.code == .timeout && e?.message.contains("waiting for the commit on channel 0") == true, "\(e?.message ?? "")")
        #expect(took >= .milliseconds(2400) && took < .seconds(10), "\(took)")
        // The stall timeout (1 s) alone would still be waiting: keepalives keep it alive.
        let t = try OSThread(name: "ds-test-late") { usleep(2_500_000); sendRaw(b, controlFrame(.ping)) }
        defer { t.join() }
        let f = try ch.receive()
        #expect(f.header.type == .ping)
    }
}
