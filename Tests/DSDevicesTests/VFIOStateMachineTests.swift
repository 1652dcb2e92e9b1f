import Testing
@testable import DSDevices

/// A second, independent transcription of `vfio_mig_get_next_state()` (drivers/vfio/vfio_main.c,
/// v6.2+): the table as data, copied row by row in the C source's order, by the kernel's names,
/// and the C loop written as-is (plus the upstream ERROR-termination fix, without which the C
/// loop never ends on STOP_COPY -> PRE_COPY(_P2P)).
enum KernelReference {
    static let order = ["STOP", "RUNNING", "PRE_COPY", "PRE_COPY_P2P", "STOP_COPY", "RESUMING", "RUNNING_P2P", "ERROR"]

    // vfio_from_fsm_table[row][column], both in `order`.
    static let table: [String: [String]] = [
        "STOP": ["STOP", "RUNNING_P2P", "RUNNING_P2P", "RUNNING_P2P", "STOP_COPY", "RESUMING", "RUNNING_P2P", "ERROR"],
        "RUNNING": ["RUNNING_P2P", "RUNNING", "PRE_COPY", "RUNNING_P2P", "RUNNING_P2P", "RUNNING_P2P", "RUNNING_P2P", "ERROR"],
        "PRE_COPY": ["RUNNING", "RUNNING", "PRE_COPY", "PRE_COPY_P2P", "PRE_COPY_P2P", "RUNNING", "RUNNING", "ERROR"],
        "PRE_COPY_P2P": ["RUNNING_P2P", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P", "STOP_COPY", "RUNNING_P2P", "RUNNING_P2P", "ERROR"],
        "STOP_COPY": ["STOP", "STOP", "ERROR", "ERROR", "STOP_COPY", "STOP", "STOP", "ERROR"],
        "RESUMING": ["STOP", "STOP", "STOP", "STOP", "STOP", "RESUMING", "STOP", "ERROR"],
        "RUNNING_P2P": ["STOP", "RUNNING", "RUNNING", "PRE_COPY_P2P", "STOP", "STOP", "RUNNING_P2P", "ERROR"],
        "ERROR": ["ERROR", "ERROR", "ERROR", "ERROR", "ERROR", "ERROR", "ERROR", "ERROR"],
    ]

    static let STOP_COPY: UInt32 = 1, P2P: UInt32 = 2, PRE_COPY: UInt32 = 4

    // state_flags_table
    static let stateFlags: [String: UInt32] = [
        "STOP": STOP_COPY, "RUNNING": STOP_COPY,
        "PRE_COPY": STOP_COPY | PRE_COPY,
        "PRE_COPY_P2P": STOP_COPY | P2P | PRE_COPY,
        "STOP_COPY": STOP_COPY, "RESUMING": STOP_COPY,
        "RUNNING_P2P": STOP_COPY | P2P,
        "ERROR": ~0,
    ]

    /// Returns the next state's name, or nil for -EINVAL.
    static func next(_ cur: String, _ new: String, _ migrationFlags: UInt32) -> String? {
        let f = { (s: String) in stateFlags[s]! }
        if (f(cur) & migrationFlags) != f(cur) { return nil }
        if (f(new) & migrationFlags) != f(new) { return nil }
        let col = order.firstIndex(of: new)!
        var nxt = table[cur]![col]
        while nxt != "ERROR" && (f(nxt) & migrationFlags) != f(nxt) {
            nxt = table[nxt]![col]
        }
        return nxt != "ERROR" ? nxt : nil
    }
}

@Suite("VFIO v2 state machine")
struct VFIOStateMachineTests {
    static let allFlags: [VFIOMigrationFlags] = (0..<8).map { VFIOMigrationFlags(rawValue: UInt64($0)) }
    static let validFlags = allFlags.filter { $0.contains(.stopCopy) }

    @Test func kernelNames() {
        #expect(VFIODeviceState.allCases.map(\.description) ==
                ["ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P", "PRE_COPY", "PRE_COPY_P2P"])
        #expect(VFIODeviceState.allCases.map(\.rawValue) == Array(0..<8))
        #expect(VFIOMigrationFlags.stopCopy.rawValue == 1)
        #expect(VFIOMigrationFlags.p2p.rawValue == 2)
        #expect(VFIOMigrationFlags.preCopy.rawValue == 4)
    }

    /// All 8 flag combinations x 8 from x 8 to (512; the 256 with STOP_COPY are the ones a
    /// kernel can register) against the reference transcription.
    @Test func matchesKernelTableForAllCombinations() {
        var compared = 0
        var allowed = 0
        for flags in Self.allFlags {
            for from in VFIODeviceState.allCases {
                for to in VFIODeviceState.allCases {
                    let expected = KernelReference.next(from.description, to.description, UInt32(flags.rawValue))
                    let got = VFIOStateMachine.nextState(from: from, to: to, flags: flags)
                    #expect(got?.description == expected, "flags \(flags) \(from) -> \(to)")
                    compared += 1
                    if got != nil { allowed += 1 }
                }
            }
        }
        #expect(compared == 512)
        // Without STOP_COPY nothing is supported.
        for flags in Self.allFlags where !flags.contains(.stopCopy) {
            for from in VFIODeviceState.allCases {
                for to in VFIODeviceState.allCases {
                    #expect(VFIOStateMachine.nextState(from: from, to: to, flags: flags) == nil)
                }
            }
        }
        // Supported states per valid flag set: 4, 5 (P2P), 5 (PRE_COPY), 7 (both); minus the two
        // blocked STOP_COPY -> PRE_COPY(_P2P) pairs: 16 + 25 + 24 + 47.
        #expect(allowed == 16 + 25 + 24 + 47)
    }

    @Test func pathsAreLegalArcsEndingAtTarget() {
        for flags in Self.allFlags {
            for from in VFIODeviceState.allCases {
                for to in VFIODeviceState.allCases {
                    let p = VFIOStateMachine.path(from: from, to: to, flags: flags)
                    let n = VFIOStateMachine.nextState(from: from, to: to, flags: flags)
                    #expect((p == nil) == (n == nil), "flags \(flags) \(from) -> \(to)")
                    guard let p else { continue }
                    if from == to {
                        #expect(p.isEmpty)
                        continue
                    }
                    #expect(p.last == to)
                    #expect(p.first == n)
                    #expect(!p.contains(from))
                    #expect(Set(p).count == p.count, "no state visited twice")
                    var cur = from
                    for hop in p {
                        // Each hop is a single arc: asked for directly, the kernel goes straight there,
                        // and it is on the way to `to`.
                        #expect(VFIOStateMachine.nextState(from: cur, to: hop, flags: flags) == hop)
                        #expect(KernelReference.next(cur.description, to.description, UInt32(flags.rawValue)) == hop.description)
                        #expect(VFIOStateMachine.isSupported(hop, flags: flags))
                        cur = hop
                    }
                }
            }
        }
    }

    @Test func knownAnswers() {
        let sc: VFIOMigrationFlags = [.stopCopy]
        let pre: VFIOMigrationFlags = [.stopCopy, .preCopy]
        let p2p: VFIOMigrationFlags = [.stopCopy, .p2p]
        let all: VFIOMigrationFlags = [.stopCopy, .p2p, .preCopy]

        #expect(VFIOStateMachine.nextState(from: .running, to: .stopCopy, flags: sc) == .stop)
        #expect(VFIOStateMachine.path(from: .running, to: .stopCopy, flags: sc) == [.stop, .stopCopy])
        #expect(VFIOStateMachine.path(from: .running, to: .stopCopy, flags: pre) == [.stop, .stopCopy])
        #expect(VFIOStateMachine.path(from: .running, to: .stopCopy, flags: p2p) == [.runningP2P, .stop, .stopCopy])
        #expect(VFIOStateMachine.path(from: .running, to: .stop, flags: sc) == [.stop])
        #expect(VFIOStateMachine.path(from: .stop, to: .running, flags: sc) == [.running])
        #expect(VFIOStateMachine.nextState(from: .running, to: .preCopy, flags: sc) == nil)
        #expect(VFIOStateMachine.nextState(from: .running, to: .preCopy, flags: p2p) == nil)
        #expect(VFIOStateMachine.path(from: .running, to: .preCopy, flags: pre) == [.preCopy])
        #expect(VFIOStateMachine.path(from: .preCopy, to: .stopCopy, flags: pre) == [.stopCopy])
        #expect(VFIOStateMachine.path(from: .preCopy, to: .stopCopy, flags: all) == [.preCopyP2P, .stopCopy])
        #expect(VFIOStateMachine.path(from: .stopCopy, to: .running, flags: sc) == [.stop, .running])
        #expect(VFIOStateMachine.path(from: .resuming, to: .running, flags: pre) == [.stop, .running])
        #expect(VFIOStateMachine.nextState(from: .runningP2P, to: .stop, flags: sc) == nil, "RUNNING_P2P needs P2P")
        // Blocked arcs (the kernel's infinite loop before the upstream fix).
        #expect(VFIOStateMachine.nextState(from: .stopCopy, to: .preCopy, flags: pre) == nil)
        #expect(VFIOStateMachine.nextState(from: .stopCopy, to: .preCopy, flags: all) == nil)
        #expect(VFIOStateMachine.nextState(from: .stopCopy, to: .preCopyP2P, flags: all) == nil)
        #expect(VFIOStateMachine.path(from: .stopCopy, to: .preCopy, flags: all) == nil)
        // ERROR: never a source nor a target.
        for flags in Self.allFlags {
            for s in VFIODeviceState.allCases {
                #expect(VFIOStateMachine.nextState(from: .error, to: s, flags: flags) == nil)
                #expect(VFIOStateMachine.nextState(from: s, to: .error, flags: flags) == nil)
                #expect(VFIOStateMachine.path(from: .error, to: s, flags: flags) == nil)
            }
        }
        // from == to
        #expect(VFIOStateMachine.path(from: .stop, to: .stop, flags: sc) == [])
        #expect(VFIOStateMachine.nextState(from: .stop, to: .stop, flags: sc) == .stop)
    }

    /// The combination transitions listed in the comment above `vfio_from_fsm_table`, for a
    /// device with every optional feature.
    @Test func kernelCommentCombinationTransitions() {
        let listed = """
            PRE_COPY -> PRE_COPY_P2P -> STOP_COPY
            PRE_COPY -> RUNNING -> RUNNING_P2P
            PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP
            PRE_COPY -> RUNNING -> RUNNING_P2P -> STOP -> RESUMING
            PRE_COPY_P2P -> RUNNING_P2P -> RUNNING
            PRE_COPY_P2P -> RUNNING_P2P -> STOP
            PRE_COPY_P2P -> RUNNING_P2P -> STOP -> RESUMING
            RESUMING -> STOP -> RUNNING_P2P
            RESUMING -> STOP -> RUNNING_P2P -> PRE_COPY_P2P
            RESUMING -> STOP -> RUNNING_P2P -> RUNNING
            RESUMING -> STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY
            RESUMING -> STOP -> STOP_COPY
            RUNNING -> RUNNING_P2P -> PRE_COPY_P2P
            RUNNING -> RUNNING_P2P -> STOP
            RUNNING -> RUNNING_P2P -> STOP -> RESUMING
            RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY
            RUNNING_P2P -> RUNNING -> PRE_COPY
            RUNNING_P2P -> STOP -> RESUMING
            RUNNING_P2P -> STOP -> STOP_COPY
            STOP -> RUNNING_P2P -> PRE_COPY_P2P
            STOP -> RUNNING_P2P -> RUNNING
            STOP -> RUNNING_P2P -> RUNNING -> PRE_COPY
            STOP_COPY -> STOP -> RESUMING
            STOP_COPY -> STOP -> RUNNING_P2P
            STOP_COPY -> STOP -> RUNNING_P2P -> RUNNING
            """
        let byName = Dictionary(uniqueKeysWithValues: VFIODeviceState.allCases.map { ($0.description, $0) })
        let all: VFIOMigrationFlags = [.stopCopy, .p2p, .preCopy]
        var count = 0
        for line in listed.split(separator: "\n") {
            let states = line.split(separator: " ").filter { $0 != "->" }.map { byName[String($0)]! }
            let p = VFIOStateMachine.path(from: states.first!, to: states.last!, flags: all)
            #expect(p == Array(states.dropFirst()), "\(line)")
            count += 1
        }
        #expect(count == 25)
    }

    @Test func runningAndSaving() {
        let running = VFIODeviceState.allCases.filter(VFIOStateMachine.isRunning)
        let saving = VFIODeviceState.allCases.filter(VFIOStateMachine.isSaving)
        #expect(running == [.running, .runningP2P, .preCopy, .preCopyP2P])
        #expect(saving == [.stopCopy, .preCopy, .preCopyP2P])
    }
}
