import DSSupport

/// VFIO v2 migration states: `enum vfio_device_mig_state` in `include/uapi/linux/vfio.h`
/// (PRE_COPY and PRE_COPY_P2P since Linux 6.2).
public enum VFIODeviceState: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case error = 0
    case stop = 1
    case running = 2
    case stopCopy = 3
    case resuming = 4
    case runningP2P = 5
    case preCopy = 6
    case preCopyP2P = 7

    /// The kernel's name, without the `VFIO_DEVICE_STATE_` prefix.
    public var description: String {
        switch self {
        case .error: "ERROR"
        case .stop: "STOP"
        case .running: "RUNNING"
        case .stopCopy: "STOP_COPY"
        case .resuming: "RESUMING"
        case .runningP2P: "RUNNING_P2P"
        case .preCopy: "PRE_COPY"
        case .preCopyP2P: "PRE_COPY_P2P"
        }
    }
}

/// `struct vfio_device_feature_migration.flags`: the optional migration features a device has.
public struct VFIOMigrationFlags: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// `VFIO_MIGRATION_STOP_COPY`: STOP, STOP_COPY and RESUMING (mandatory for a migratable device).
    public static let stopCopy = VFIOMigrationFlags(rawValue: 1 << 0)
    /// `VFIO_MIGRATION_P2P`: RUNNING_P2P (and PRE_COPY_P2P with `preCopy`).
    public static let p2p = VFIOMigrationFlags(rawValue: 1 << 1)
    /// `VFIO_MIGRATION_PRE_COPY`: PRE_COPY (and PRE_COPY_P2P with `p2p`).
    public static let preCopy = VFIOMigrationFlags(rawValue: 1 << 2)

    public var description: String {
        var names: [String] = []
        if contains(.stopCopy) { names.append("STOP_COPY") }
        if contains(.p2p) { names.append("P2P") }
        if contains(.preCopy) { names.append("PRE_COPY") }
        let unknown = rawValue & ~0x7
        if unknown != 0 { names.append(Hex.code(unknown)) }
        return names.isEmpty ? "[]" : names.joined(separator: "|")
    }
}

/// The VFIO v2 migration finite state machine.
///
/// `nextState` is a port of `vfio_mig_get_next_state()` in Linux `drivers/vfio/vfio_main.c`
/// (v6.2+, with PRE_COPY): the 8x8 `vfio_from_fsm_table`, the `state_flags_table`, the checks
/// that both the current and the requested state are supported by the device's migration flags,
/// and the loop that skips over arcs into states the flags do not support.
///
/// One deliberate deviation: in the kernel, a blocked arc (STOP_COPY -> PRE_COPY or
/// STOP_COPY -> PRE_COPY_P2P on a PRE_COPY-capable device) yields ERROR in the skip loop, and as
/// `state_flags_table[ERROR]` is `~0U` and `vfio_from_fsm_table[ERROR][*]` is ERROR, the loop
/// never ends (a soft lockup; a 2026 stable patch by Junrui Luo, "Fixes: 4db52602a607 vfio:
/// Extend the device migration protocol with PRE_COPY", adds `*next_fsm != VFIO_DEVICE_STATE_ERROR &&`
/// to the loop condition). This port stops at ERROR, as the patched kernel does, and returns nil
/// (-EINVAL).
package enum VFIOStateMachine {
    /// Number of states (`VFIO_DEVICE_NUM_STATES = VFIO_DEVICE_STATE_PRE_COPY_P2P + 1`).
    static let stateCount = 8

    /// `vfio_from_fsm_table[cur][new]`: the next state on the way from `cur` to `new`, before
    /// optional states are skipped. Rows and columns are indexed by the raw state value.
    static let fromFSMTable: [[VFIODeviceState]] = {
        var t = [[VFIODeviceState]](repeating: [VFIODeviceState](repeating: .error, count: stateCount),
                                    count: stateCount)
        func row(_ from: VFIODeviceState, _ arcs: [VFIODeviceState: VFIODeviceState]) {
            for (to, next) in arcs { t[Int(from.rawValue)][Int(to.rawValue)] = next }
        }
        row(.stop, [.stop: .stop, .running: .runningP2P, .preCopy: .runningP2P,
                    .preCopyP2P: .runningP2P, .stopCopy: .stopCopy, .resuming: .resuming,
                    .runningP2P: .runningP2P, .error: .error])
        row(.running, [.stop: .runningP2P, .running: .running, .preCopy: .preCopy,
                       .preCopyP2P: .runningP2P, .stopCopy: .runningP2P, .resuming: .runningP2P,
                       .runningP2P: .runningP2P, .error: .error])
        row(.preCopy, [.stop: .running, .running: .running, .preCopy: .preCopy,
                       .preCopyP2P: .preCopyP2P, .stopCopy: .preCopyP2P, .resuming: .running,
                       .runningP2P: .running, .error: .error])
        row(.preCopyP2P, [.stop: .runningP2P, .running: .runningP2P, .preCopy: .preCopy,
                          .preCopyP2P: .preCopyP2P, .stopCopy: .stopCopy, .resuming: .runningP2P,
                          .runningP2P: .runningP2P, .error: .error])
        row(.stopCopy, [.stop: .stop, .running: .stop, .preCopy: .error, .preCopyP2P: .error,
                        .stopCopy: .stopCopy, .resuming: .stop, .runningP2P: .stop, .error: .error])
        row(.resuming, [.stop: .stop, .running: .stop, .preCopy: .stop, .preCopyP2P: .stop,
                        .stopCopy: .stop, .resuming: .resuming, .runningP2P: .stop, .error: .error])
        row(.runningP2P, [.stop: .stop, .running: .running, .preCopy: .running,
                          .preCopyP2P: .preCopyP2P, .stopCopy: .stop, .resuming: .stop,
                          .runningP2P: .runningP2P, .error: .error])
        // The ERROR row is all ERROR (the initial value).
        return t
    }()

    /// `state_flags_table[state]`: the migration flags a state needs. ERROR needs `~0U`, so it is
    /// never "supported".
    static func requiredFlags(_ s: VFIODeviceState) -> UInt64 {
        let stopCopy = VFIOMigrationFlags.stopCopy.rawValue
        let p2p = VFIOMigrationFlags.p2p.rawValue
        let preCopy = VFIOMigrationFlags.preCopy.rawValue
        switch s {
        case .stop, .running, .stopCopy, .resuming: return stopCopy
        case .preCopy: return stopCopy | preCopy
        case .preCopyP2P: return stopCopy | p2p | preCopy
        case .runningP2P: return stopCopy | p2p
        case .error: return UInt64(UInt32.max)  // ~0U
        }
    }

    /// `(state_flags_table[s] & device->migration_flags) == state_flags_table[s]`.
    /// The kernel's `migration_flags` is a `u32`, so only the low 32 bits of `flags` count.
    package static func isSupported(_ s: VFIODeviceState, flags: VFIOMigrationFlags) -> Bool {
        let need = requiredFlags(s)
        return (need & (flags.rawValue & 0xFFFF_FFFF)) == need
    }

    /// The kernel's `vfio_mig_get_next_state` (drivers/vfio/vfio_main.c); nil where it returns
    /// -EINVAL: `from` or `to` not supported by `flags` (ERROR never is), or the arc is blocked.
    package static func nextState(from: VFIODeviceState, to: VFIODeviceState,
                                 flags: VFIOMigrationFlags) -> VFIODeviceState? {
        // WARN_ON(... (state_flags_table[cur_fsm] & migration_flags) != state_flags_table[cur_fsm])
        guard isSupported(from, flags: flags) else { return nil }
        // (state_flags_table[new_fsm] & migration_flags) != state_flags_table[new_fsm]
        guard isSupported(to, flags: flags) else { return nil }
        // Arcs touching optional and unsupported states are skipped over.
        var next = fromFSMTable[Int(from.rawValue)][Int(to.rawValue)]
        while next != .error && !isSupported(next, flags: flags) {
            next = fromFSMTable[Int(next.rawValue)][Int(to.rawValue)]
        }
        return next == .error ? nil : next
    }

    /// The arcs a driver walks from `from` to `to`, excluding `from` and ending at `to`;
    /// nil where `nextState` fails on the way. `from == to` gives `[]` (when `from` is supported
    /// by `flags`; an unsupported state or ERROR gives nil).
    package static func path(from: VFIODeviceState, to: VFIODeviceState,
                            flags: VFIOMigrationFlags) -> [VFIODeviceState]? {
        guard isSupported(from, flags: flags), isSupported(to, flags: flags) else { return nil }
        var current = from
        var arcs: [VFIODeviceState] = []
        while current != to {
            guard let next = nextState(from: current, to: to, flags: flags) else { return nil }
            arcs.append(next)
            current = next
            // The table has no cycle, so a walk is at most stateCount-1 arcs; guard anyway.
            if arcs.count > stateCount { return nil }
        }
        return arcs
    }

    /// The device runs: RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P.
    package static func isRunning(_ s: VFIODeviceState) -> Bool {
        switch s {
        case .running, .runningP2P, .preCopy, .preCopyP2P: true
        default: false
        }
    }

    /// The states migration data can be read in.
    package static let savingStates: [VFIODeviceState] = [.preCopy, .preCopyP2P, .stopCopy]

    /// Migration data can be read: PRE_COPY, PRE_COPY_P2P, STOP_COPY.
    package static func isSaving(_ s: VFIODeviceState) -> Bool {
        switch s {
        case .preCopy, .preCopyP2P, .stopCopy: true
        default: false
        }
    }
}
