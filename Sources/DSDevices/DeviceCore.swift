import Synchronization
import DSSupport

/// The skeleton every built-in device shares (`FileDevice`, `VFIODevice`, and the simulators in
/// DSSimulation): the VFIO state, whether the device is closed and the device's own mutable
/// fields (`Inner`) under one lock; transitions walked one arc at a time along
/// `VFIOStateMachine.path`, with an optional activity (a workload) quiesced while the device does
/// not run; and the checks, with their messages, for a closed device, an operation in a state
/// that does not allow it, and a config blob.
///
/// `Inner` is `Sendable` so the lock can hand it to any closure; what a device shares with other
/// threads outside the lock (mapped memory, an atomic bitmap) stays on the device.
package final class DeviceCore<Inner: Sendable>: Sendable {
    /// What the lock guards.
    package struct Locked: Sendable {
        /// The device's VFIO state (what `MigratableDevice.state` reports).
        package var state: VFIODeviceState
        /// Set once by `close`; every other operation then throws `.invalidState`.
        package fileprivate(set) var isClosed = false
        /// The config a destination loaded (`loadConfig`), which it reports from then on.
        package fileprivate(set) var loadedConfig: [UInt8]?
        /// The device's own fields.
        package var inner: Inner
    }

    /// One arc of a transition: the device moves from `from` to `to`.
    package struct Arc: Sendable {
        package let from: VFIODeviceState
        package let to: VFIODeviceState
        /// The arc enters a saving state from one that is not (a new migration stream starts).
        package var startsSaving: Bool { VFIOStateMachine.isSaving(to) && !VFIOStateMachine.isSaving(from) }
        /// The arc leaves RESUMING (the migration data must now be complete).
        package var leavesResuming: Bool { from == .resuming && to != .resuming }
    }

    /// The message prefix naming the device (`sim device`, `vfio:/dev/vfio/devices/vfio0`).
    package let name: String
    /// The device's migration flags: which states exist for it.
    package let flags: VFIOMigrationFlags
    private let mutex: Mutex<Locked>

    package init(name: String, flags: VFIOMigrationFlags, state: VFIODeviceState, inner: Inner) {
        self.name = name
        self.flags = flags
        mutex = Mutex(Locked(state: state, inner: inner))
    }

    /// The current state (read under the lock).
    package var state: VFIODeviceState { mutex.withLock { $0.state } }

    /// Runs `body` under the lock, whether the device is open or closed. The lock is not
    /// recursive: `body` must not call `state` or another method of this core that locks.
    package func withLock<R: Sendable, E: Error>(_ body: (inout Locked) throws(E) -> R) throws(E) -> R {
        try mutex.withLock { (locked: inout Locked) throws(E) -> R in try body(&locked) }
    }

    /// Runs `body` under the lock once the device is known to be open.
    /// - Throws: `.invalidState` when the device is closed, or what `body` throws.
    package func withOpen<R: Sendable>(_ body: (inout Locked) throws(DeviceError) -> R) throws(DeviceError) -> R {
        try withLock { (locked: inout Locked) throws(DeviceError) -> R in
            try checkOpen(locked)
            return try body(&locked)
        }
    }

    /// Runs `body` under the lock once the device is open and in one of `allowed`.
    /// - Throws: `.invalidState` naming `action`, the state and the allowed states.
    package func withOpen<R: Sendable>(in allowed: [VFIODeviceState], to action: String,
                                       _ body: (inout Locked) throws(DeviceError) -> R) throws(DeviceError) -> R {
        try withOpen { (locked: inout Locked) throws(DeviceError) -> R in
            try check(locked.state, in: allowed, to: action)
            return try body(&locked)
        }
    }

    /// Runs `body` under the lock once the device is open and its state allows `access` of the
    /// data plane (`.save`: a saving state; `.load`: RESUMING).
    package func withOpen<R: Sendable>(for access: DeviceAccess,
                                       _ body: (inout Locked) throws(DeviceError) -> R) throws(DeviceError) -> R {
        try withOpen(in: Self.states(for: access), to: Self.action(for: access), body)
    }

    /// `.invalidState` when the device is closed.
    private func checkOpen(_ locked: Locked) throws(DeviceError) {
        if locked.isClosed {
            throw DeviceError(.invalidState, "\(name): the device is closed; open a new one")
        }
    }

    /// `.invalidState` unless `state` is one of `allowed`: "NAME: cannot ACTION in state X; allowed
    /// in A and B" (only the allowed states this device's flags support are listed).
    package func check(_ state: VFIODeviceState, in allowed: [VFIODeviceState], to action: String) throws(DeviceError) {
        guard !allowed.contains(state) else { return }
        let supported = allowed.filter { VFIOStateMachine.isSupported($0, flags: flags) }
        let names = supported.map(\.description)
        let allowedText: String
        switch names.count {
        case 0: allowedText = "a device with migration flags \(flags) has no state that allows it"
        case 1: allowedText = "allowed in \(names[0]) only"
        default: allowedText = "allowed in \(names.dropLast().joined(separator: ", ")) and \(names.last!)"
        }
        throw DeviceError(.invalidState, "\(name): cannot \(action) in state \(state); \(allowedText)")
    }

    /// Moves the device to `target` along `VFIOStateMachine.path`, one arc at a time, as a driver
    /// sees it. For each arc: `activity` is paused when the arc leaves the running states; `arc`
    /// runs with `locked.state` still the arc's `from`, and may change the device's fields; then
    /// the state becomes the arc's `to`, and `activity` resumes when the arc enters the running
    /// states. When `arc` throws, the state is what `arc` left (its `from`, unless it set another,
    /// e.g. ERROR), `activity` runs again if that state is a running one, and no further arc runs.
    /// - Throws: `.blockedTransition` (touching nothing) when the state machine has no path, or
    ///   what `arc` throws.
    package func transition(to target: VFIODeviceState, activity: (any DeviceActivity)? = nil,
                            _ arc: (Arc, inout Locked) throws(DeviceError) -> Void) throws(DeviceError) {
        try withOpen { (locked: inout Locked) throws(DeviceError) in
            guard let path = VFIOStateMachine.path(from: locked.state, to: target, flags: flags) else {
                throw blockedTransition(from: locked.state, to: target)
            }
            for next in path {
                let step = Arc(from: locked.state, to: next)
                let wasRunning = VFIOStateMachine.isRunning(step.from)
                let willRun = VFIOStateMachine.isRunning(next)
                if wasRunning && !willRun { activity?.pause() }
                do throws(DeviceError) {
                    try arc(step, &locked)
                } catch {
                    if wasRunning && !willRun && VFIOStateMachine.isRunning(locked.state) { activity?.resume() }
                    throw error
                }
                locked.state = next
                if willRun && !wasRunning { activity?.resume() }
            }
        }
    }

    /// The error for a transition the state machine has no path for, with what to do instead.
    private func blockedTransition(from: VFIODeviceState, to: VFIODeviceState) -> DeviceError {
        let hint: String
        if from == .error {
            hint = "the device is in ERROR; reset it (VFIO_DEVICE_RESET) to return to RUNNING"
        } else if to == .error {
            hint = "ERROR cannot be requested; it is where a failed transition leaves the device"
        } else if !VFIOStateMachine.isSupported(to, flags: flags) {
            hint = "the device does not support \(to); use a state its flags allow"
        } else {
            hint = "go through STOP first (e.g. \(from) -> STOP -> \(to)) if that is what you mean"
        }
        return DeviceError(.blockedTransition,
                           "\(name): the VFIO migration state machine has no path from \(from) to \(to) with migration flags \(flags) (the kernel's vfio_mig_get_next_state refuses it); \(hint)")
    }

    /// The config a destination loaded, if any (after a migration it reports the source's),
    /// else the one `make` builds from the device's current state.
    package func saveConfig(_ make: (Locked) -> [UInt8]) throws(DeviceError) -> [UInt8] {
        try withOpen { locked in locked.loadedConfig ?? make(locked) }
    }

    /// Loads a config from a source, in RESUMING only: `format` checks it against a device of
    /// `size` bytes, then `saveConfig` reports it.
    package func loadConfig(_ bytes: [UInt8], format: ConfigBlob, size: UInt64) throws(DeviceError) {
        try withOpen(in: [.resuming], to: "load a config") { (locked) throws(DeviceError) in
            try format.check(bytes, size: size, device: name)
            locked.loadedConfig = bytes
        }
    }

    /// Marks the device closed and runs `body` under the lock, the first time only (`close` is
    /// idempotent).
    package func close(_ body: (inout Inner) -> Void) {
        withLock { (locked: inout Locked) in
            guard !locked.isClosed else { return }
            locked.isClosed = true
            body(&locked.inner)
        }
    }

    private static func states(for access: DeviceAccess) -> [VFIODeviceState] {
        switch access {
        case .save: VFIOStateMachine.savingStates
        case .load: [.resuming]
        }
    }

    private static func action(for access: DeviceAccess) -> String {
        switch access {
        case .save: "read migration data"
        case .load: "write migration data"
        }
    }
}

/// Something that may touch a device's state only while the device runs (a workload dirtying its
/// memory). `DeviceCore.transition` pauses it before an arc out of the running states and resumes
/// it after an arc into them.
package protocol DeviceActivity: AnyObject, Sendable {
    /// Stops touching the device; returns once nothing is in progress and nothing can start.
    func pause()
    /// May touch the device again.
    func resume()
}

/// The fixed head of a built-in device's config blob: an eight-character magic (`DSSIMCFG`,
/// stored little-endian), an optional version word, then the state size; the device's own words
/// follow. Every word is a little-endian `UInt64`.
package struct ConfigBlob: Sendable {
    package let magic: UInt64
    package let version: UInt64?
    /// The blob's exact length in bytes.
    package let count: Int
    /// What makes such blobs, for "the source is not a KIND" (`sim device`).
    package let kind: String

    package init(magic: UInt64, version: UInt64? = nil, count: Int, kind: String) {
        self.magic = magic
        self.version = version
        self.count = count
        self.kind = kind
    }

    private var sizeOffset: Int { version == nil ? 8 : 16 }

    /// The magic as text (`DSSIMCFG`).
    package var magicText: String {
        withUnsafeBytes(of: magic.littleEndian) { String(decoding: $0, as: UTF8.self) }
    }

    /// The head of a blob for a device of `size` bytes: magic, version (if any), size.
    package func head(size: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        out.appendLE(magic)
        if let version { out.appendLE(version) }
        out.appendLE(size)
        return out
    }

    /// Checks a blob from a source against this format and a destination of `size` bytes.
    /// - Throws: `.malformedStream` naming `device` and what is wrong.
    package func check(_ bytes: [UInt8], size: UInt64, device: String) throws(DeviceError) {
        let versionText = version.map { ", version \($0)" } ?? ""
        guard bytes.count == count, bytes.loadLE(at: 0, as: UInt64.self) == magic,
              version.map({ bytes.loadLE(at: 8, as: UInt64.self) == $0 }) ?? true else {
            throw DeviceError(.malformedStream, "\(device): a config of \(bytes.count) bytes is not a \(kind) config (\(count) bytes: magic \(magicText)\(versionText), size); the source is not a \(kind) or the config is corrupt")
        }
        let theirs = bytes.loadLE(at: sizeOffset, as: UInt64.self)
        guard theirs == size else {
            throw DeviceError(.malformedStream, "\(device): the config is for a device of \(theirs) bytes but this device has \(size); make the destination with the source's size")
        }
    }
}
