import Testing
@testable import DeviceStream
import DSWire
import DSTransport
import DSSupport
import DSCodec
import DSRing
import DSDevices
import DSScheduler

/// The shared handover state machine, without sockets: the happy path at both ends, and every
/// frame type out of turn at every stage.
@Suite struct HandoverMachineTests {
    /// The steps in protocol order: (frame, who sends it).
    static let steps: [(FrameType, Handover.Side)] = [
        (.loaded, .destination), (.commit, .source), (.resumed, .destination), (.ack, .destination), (.endOfStream, .source),
    ]

    /// Walks `m` to `stage` along the protocol (sending or receiving each step by side).
    static func walk(_ m: inout Handover, to stage: Handover.Stage) throws {
        if stage == .transferring { return }
        m.stateSent()
        for (frame, sender) in steps where m.stage < stage {
            if sender == m.side { m.sent(frame) } else { _ = try m.received(frame) }
        }
        #expect(m.stage == stage)
    }

    @Test func sourceHappyPath() throws {
        var m = Handover(side: .source)
        #expect(try m.received(.loadStats) == .none)
        m.stateSent()
        #expect(try m.received(.loaded) == .sendCommit)
        #expect(m.maySend(.commit))
        m.sent(.commit)
        #expect(try m.received(.resumed) == .endDowntime)
        #expect(try m.received(.ack) == .compareDigests)
        m.sent(.endOfStream)
        #expect(m.stage == .finished)
    }

    @Test func destinationHappyPath() throws {
        var m = Handover(side: .destination)
        m.stateSent()
        m.sent(.loaded)
        #expect(try m.received(.ping) == .none)
        #expect(try m.received(.commit) == .runDevices)
        m.sent(.resumed)
        m.sent(.ack)
        #expect(try m.received(.endOfStream) == .compareDigests)
        #expect(m.stage == .finished)
    }

    /// The frames each end may take at each stage; everything else is a protocol violation.
    static func allowed(_ side: Handover.Side, _ stage: Handover.Stage) -> Set<FrameType> {
        switch (side, stage) {
        case (.source, .transferring): [.switchoverAck, .loadStats, .pong]
        case (.source, .stateSent): [.switchoverAck, .loadStats, .pong, .loaded]
        case (.source, .loaded): [.switchoverAck, .loadStats, .pong]
        case (.source, .committed): [.resumed]
        case (.source, .resumed): [.ack]
        case (.destination, .stateSent): [.ping]
        case (.destination, .loaded): [.ping, .commit]
        case (.destination, .acknowledged): [.endOfStream]
        default: []
        }
    }

    @Test(arguments: Handover.Side.allCases, Handover.Stage.allCases)
    func everyFrameOutOfTurnIsRefused(side: Handover.Side, stage: Handover.Stage) throws {
        for frame in FrameType.allCases {
            var m = Handover(side: side)
            try Self.walk(&m, to: stage)
            if Self.allowed(side, stage).contains(frame) {
                _ = try m.received(frame)
            } else {
                #expect(throws: TransferError.self, "\(side) at \(stage) took \(frame)") { _ = try m.received(frame) }
                #expect(m.stage == stage, "a refused frame moved the machine")
            }
        }
    }

    @Test func theClassicViolationsSayWhatCameOutOfOrder() throws {
        var src = Handover(side: .source)
        do { _ = try src.received(.resumed); Issue.record("resumed before commit accepted") } catch {
            #expect(error.code == .protocolViolation)
            #expect(error.message.contains("resumed out of order"))
        }
        var dst = Handover(side: .destination)
        try Self.walk(&dst, to: .stateSent)
        // `commit` before this end sent `loaded`.
        #expect(throws: TransferError.self) { _ = try dst.received(.commit) }
        // A second `loaded` after the source has it.
        var src2 = Handover(side: .source)
        try Self.walk(&src2, to: .loaded)
        #expect(throws: TransferError.self) { _ = try src2.received(.loaded) }
        #expect(!src2.maySend(.endOfStream))
    }
}
