#if canImport(Glibc)
import Glibc
#endif
import Synchronization
@testable import DSDevices

/// A fake kernel under `VFIOIoctlLayer` that behaves like a VFIO v2 variant driver with
/// PRE_COPY (modelled on mlx5_vfio_pci): `VFIO_DEVICE_FEATURE` probe/get/set, single-arc state
/// changes (an arc is accepted only when `vfio_mig_get_next_state(cur, new) == new`), a `data_fd`
/// returned on the arcs into PRE_COPY(_P2P), STOP_COPY (from STOP) and RESUMING,
/// `VFIO_MIG_GET_PRECOPY_INFO` on the save fd, and ENOMSG from `read()` when PRE_COPY has no data
/// for now.
///
/// The save stream is `magic` + the device image + anything dirtied during PRE_COPY; RESUMING
/// checks the magic on RESUMING -> STOP and fails the arc with EINVAL (device to ERROR) if absent.
final class FakeVFIOKernel: VFIOIoctlLayer {
    static let magic: [UInt8] = Array("FAKEVFIO".utf8)

    struct Config: Sendable {
        var flags: VFIOMigrationFlags = [.stopCopy, .preCopy]
        var devicePath = "/dev/vfio/devices/vfio0"
        var groupPath = "/dev/vfio/7"
        var deviceName = "0000:06:0d.0"
        /// false: no mig_ops (ENOTTY for the migration features).
        var migratable = true
        /// false: no VFIO_DEVICE_FEATURE_MIG_DATA_SIZE (ENOTTY).
        var supportsDataSize = true
        var initialState: VFIODeviceState = .running
        var image: [UInt8] = Array(0..<100)
    }

    enum FDKind: Equatable, Sendable {
        case device, group
        case save(Int), resume(Int)
    }

    struct State: Sendable {
        var config: Config
        var deviceState: VFIODeviceState
        var fds: [Int32: FDKind] = [:]
        var nextFD: Int32 = 100
        var nextFile = 1
        /// The data file now live (others read/write as ENODEV, like a disabled mlx5 migf).
        var activeFile: Int? = nil
        var stream: [UInt8] = []          // readable now
        var initialLeft = 0               // of `stream`, bytes of the initial image
        var dirty: [UInt8] = []           // dirtied in PRE_COPY, not yet in `stream`
        var received: [UInt8] = []        // RESUMING
        var loaded: [UInt8]? = nil        // image loaded by RESUMING -> STOP
        var setArcs: [VFIODeviceState] = []
        var closed: [Int32] = []
        var precopyInfoENOMSG = false
        var failNextSet: Int32? = nil     // errno
        var ioctlRequests: [UInt] = []
    }

    let m: Mutex<State>

    init(_ config: Config = Config()) {
        m = Mutex(State(config: config, deviceState: config.initialState))
    }

    // MARK: test hooks

    var state: State { m.withLock { $0 } }
    var deviceState: VFIODeviceState { m.withLock { $0.deviceState } }
    func dirtyData(_ bytes: [UInt8]) { m.withLock { $0.dirty += bytes } }
    func setPrecopyInfoENOMSG(_ v: Bool) { m.withLock { $0.precopyInfoENOMSG = v } }
    func failNextSet(errno e: Int32) { m.withLock { $0.failNextSet = e } }

    // MARK: VFIOIoctlLayer

    func open(_ path: String) -> Int32 {
        m.withLock { s in
            let kind: FDKind
            if path == s.config.devicePath { kind = .device }
            else if path == s.config.groupPath { kind = .group }
            else { return -ENOENT }
            return Self.newFD(&s, kind)
        }
    }

    func close(_ fd: Int32) {
        m.withLock { s in
            if s.fds.removeValue(forKey: fd) != nil { s.closed.append(fd) }
        }
    }

    private static func newFD(_ s: inout State, _ kind: FDKind) -> Int32 {
        let fd = s.nextFD
        s.nextFD += 1
        s.fds[fd] = kind
        return fd
    }

    func ioctl(_ fd: Int32, _ request: UInt, _ arg: UnsafeMutableRawPointer) -> Int32 {
        m.withLock { s in
            s.ioctlRequests.append(request)
            guard let kind = s.fds[fd] else { return -EBADF }
            switch (kind, request) {
            case (.group, VFIOUAPI.groupGetDeviceFD):
                let name = String(cString: arg.assumingMemoryBound(to: CChar.self))
                guard name == s.config.deviceName else { return -ENODEV }
                return Self.newFD(&s, .device)
            case (.device, VFIOUAPI.deviceFeature):
                return Self.deviceFeature(&s, arg)
            case (.save(let id), VFIOUAPI.migGetPrecopyInfo):
                guard s.activeFile == id else { return -ENODEV }
                let argsz = arg.loadUnaligned(as: UInt32.self)
                guard argsz >= UInt32(VFIOPrecopyInfo.size) else { return -EINVAL }
                guard s.deviceState == .preCopy || s.deviceState == .preCopyP2P else { return -EINVAL }
                if s.precopyInfoENOMSG { return -ENOMSG }
                let info = VFIOPrecopyInfo(argsz: argsz, flags: 0, initialBytes: UInt64(s.initialLeft),
                                           dirtyBytes: UInt64(s.stream.count - s.initialLeft + s.dirty.count))
                VFIOUAPI.store(info.encoded(), to: arg)
                return 0
            default:
                return -ENOTTY
            }
        }
    }

    /// `vfio_check_feature()`: -errno, 0 for a successful probe, 1 to go on.
    private static func checkFeature(_ flags: UInt32, _ argsz: Int, _ supported: UInt32, _ minsz: Int) -> Int32 {
        if (flags & (VFIOUAPI.featureGet | VFIOUAPI.featureSet)) & ~supported != 0 { return -EINVAL }
        if flags & VFIOUAPI.featureProbe != 0 { return 0 }
        if flags & (VFIOUAPI.featureGet | VFIOUAPI.featureSet) == 0 { return -EINVAL }
        if argsz < minsz { return -EINVAL }
        return 1
    }

    private static func deviceFeature(_ s: inout State, _ arg: UnsafeMutableRawPointer) -> Int32 {
        let argsz = Int(arg.loadUnaligned(as: UInt32.self))
        let flags = arg.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
        let hdr = VFIOUAPI.featureHeaderSize
        guard argsz >= hdr else { return -EINVAL }
        let known = VFIOUAPI.featureMask | VFIOUAPI.featureGet | VFIOUAPI.featureSet | VFIOUAPI.featureProbe
        if flags & ~known != 0 { return -EINVAL }
        if flags & VFIOUAPI.featureProbe == 0, flags & VFIOUAPI.featureGet != 0, flags & VFIOUAPI.featureSet != 0 {
            return -EINVAL
        }
        let data = arg + hdr
        let dataSize = argsz - hdr
        switch flags & VFIOUAPI.featureMask {
        case VFIOUAPI.featureMigration:
            guard s.config.migratable else { return -ENOTTY }
            let r = checkFeature(flags, dataSize, VFIOUAPI.featureGet, VFIODeviceFeatureMigration.size)
            if r != 1 { return r }
            VFIOUAPI.store(VFIODeviceFeatureMigration(flags: s.config.flags).encoded(), to: data)
            return 0
        case VFIOUAPI.featureMigDeviceState:
            guard s.config.migratable else { return -ENOTTY }
            let r = checkFeature(flags, dataSize, VFIOUAPI.featureGet | VFIOUAPI.featureSet,
                                 VFIODeviceFeatureMigState.size)
            if r != 1 { return r }
            if flags & VFIOUAPI.featureGet != 0 {
                let out = VFIODeviceFeatureMigState(deviceState: s.deviceState.rawValue, dataFD: -1)
                VFIOUAPI.store(out.encoded(), to: data)
                return 0
            }
            let req = VFIODeviceFeatureMigState.decode(VFIOUAPI.load(data, count: VFIODeviceFeatureMigState.size))!
            var fd: Int32 = -1
            let r2 = setState(&s, req.deviceState, &fd)
            VFIOUAPI.store(VFIODeviceFeatureMigState(deviceState: req.deviceState, dataFD: fd).encoded(), to: data)
            return r2
        case VFIOUAPI.featureMigDataSize:
            guard s.config.migratable, s.config.supportsDataSize else { return -ENOTTY }
            let r = checkFeature(flags, dataSize, VFIOUAPI.featureGet, VFIODeviceFeatureMigDataSize.size)
            if r != 1 { return r }
            let left: Int
            if s.deviceState == .preCopy || s.deviceState == .preCopyP2P || s.deviceState == .stopCopy {
                left = s.stream.count + s.dirty.count
            } else {
                left = magic.count + s.config.image.count
            }
            VFIOUAPI.store(VFIODeviceFeatureMigDataSize(stopCopyLength: UInt64(left)).encoded(), to: data)
            return 0
        default:
            return -ENOTTY
        }
    }

    /// The driver's `migration_set_state` for a single arc.
    private static func setState(_ s: inout State, _ raw: UInt32, _ fd: inout Int32) -> Int32 {
        guard let new = VFIODeviceState(rawValue: raw) else { return -EINVAL }
        if let e = s.failNextSet {
            s.failNextSet = nil
            s.deviceState = .error
            s.activeFile = nil
            return -e
        }
        let cur = s.deviceState
        // The driver only implements single arcs: the next step must be the target itself.
        guard VFIOStateMachine.nextState(from: cur, to: new, flags: s.config.flags) == new else {
            return -EINVAL
        }
        if cur == new { return 0 }
        s.setArcs.append(new)
        func openSave() {
            let id = s.nextFile
            s.nextFile += 1
            s.activeFile = id
            s.stream = magic + s.config.image
            s.initialLeft = s.stream.count
            s.dirty = []
            fd = newFD(&s, .save(id))
        }
        switch (cur, new) {
        case (.stop, .stopCopy), (.running, .preCopy), (.runningP2P, .preCopyP2P):
            openSave()
        case (.preCopy, .stopCopy), (.preCopyP2P, .stopCopy):
            s.stream += s.dirty   // the final state: what is left plus what changed
            s.dirty = []
        case (.stop, .resuming):
            let id = s.nextFile
            s.nextFile += 1
            s.activeFile = id
            s.received = []
            fd = newFD(&s, .resume(id))
        case (.resuming, .stop):
            s.activeFile = nil
            guard s.received.starts(with: magic) else {
                s.deviceState = .error
                return -EINVAL
            }
            s.loaded = Array(s.received.dropFirst(magic.count))
        case (.preCopy, .running), (.preCopyP2P, .runningP2P), (.stopCopy, .stop):
            s.activeFile = nil
            s.stream = []
            s.dirty = []
        default:
            break  // RUNNING <-> RUNNING_P2P <-> STOP, PRE_COPY <-> PRE_COPY_P2P, RUNNING <-> STOP
        }
        s.deviceState = new
        return 0
    }

    func read(_ fd: Int32, _ buf: UnsafeMutableRawBufferPointer) -> Int {
        m.withLock { s in
            guard let kind = s.fds[fd] else { return -Int(EBADF) }
            guard case .save(let id) = kind else { return -Int(EINVAL) }
            guard s.activeFile == id else { return -Int(ENODEV) }
            if s.stream.isEmpty && (s.deviceState == .preCopy || s.deviceState == .preCopyP2P) {
                if s.dirty.isEmpty { return -Int(ENOMSG) }
                s.stream = s.dirty
                s.dirty = []
            }
            let n = min(buf.count, s.stream.count)
            if n == 0 { return 0 }
            s.stream.withUnsafeBytes { buf.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
            s.stream.removeFirst(n)
            s.initialLeft = max(0, s.initialLeft - n)
            return n
        }
    }

    func write(_ fd: Int32, _ buf: UnsafeRawBufferPointer) -> Int {
        m.withLock { s in
            guard let kind = s.fds[fd] else { return -Int(EBADF) }
            guard case .resume(let id) = kind else { return -Int(EINVAL) }
            guard s.activeFile == id, s.deviceState == .resuming else { return -Int(ENODEV) }
            s.received += buf
            return buf.count
        }
    }
}
