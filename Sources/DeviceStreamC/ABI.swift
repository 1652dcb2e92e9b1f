import Glibc
import CDeviceStream
import DeviceStream
import DSSupport
import DSTransport
import DSDevices
import DSScheduler
import DSSimulation

// The exported functions of libdevicestream.so, one per declaration in devicestream.h (see
// the header for each contract). Handles are `Unmanaged` retains of the boxes in Handles.swift.

private func box<T: AnyObject>(_ object: T) -> OpaquePointer { OpaquePointer(Unmanaged.passRetained(object).toOpaque()) }
private func unbox<T: AnyObject>(_ p: OpaquePointer, as _: T.Type) -> T { Unmanaged<T>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue() }
private func release<T: AnyObject>(_ p: OpaquePointer?, as _: T.Type) {
    guard let p else { return }
    Unmanaged<T>.fromOpaque(UnsafeRawPointer(p)).release()
}
private func duration(_ ns: UInt64) -> Duration { .nanoseconds(Int64(clamping: ns)) }

@_cdecl("ds_abi_version")
public func ds_abi_version() -> UInt32 { UInt32(DS_ABI_VERSION_MAJOR) << 16 | UInt32(DS_ABI_VERSION_MINOR) }

// MARK: Errors

@_cdecl("ds_error_code")
public func ds_error_code(_ e: OpaquePointer?) -> Int32 { e.map { unbox($0, as: ErrorBox.self).code } ?? DS_OK }

@_cdecl("ds_error_message")
public func ds_error_message(_ e: OpaquePointer?) -> UnsafePointer<CChar>? { e.map { UnsafePointer(unbox($0, as: ErrorBox.self).message) } }

@_cdecl("ds_error_hint")
public func ds_error_hint(_ e: OpaquePointer?) -> UnsafePointer<CChar>? { e.flatMap { unbox($0, as: ErrorBox.self).hint.map { UnsafePointer($0) } } }

@_cdecl("ds_error_free")
public func ds_error_free(_ e: OpaquePointer?) { release(e, as: ErrorBox.self) }

// MARK: Options

@_cdecl("ds_options_new")
public func ds_options_new() -> OpaquePointer? { box(OptionsBox()) }

@_cdecl("ds_options_free")
public func ds_options_free(_ o: OpaquePointer?) { release(o, as: OptionsBox.self) }

@_cdecl("ds_options_set_connections")
public func ds_options_set_connections(_ o: OpaquePointer?, _ n: UInt32, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let o else { fail(err, DS_ERR_USAGE, "options is NULL"); return -1 }
    guard n >= 1, n <= 64 else { fail(err, DS_ERR_USAGE, "connections must be 1...64, got \(n)"); return -1 }
    unbox(o, as: OptionsBox.self).configuration.transfer.connections = Int(n)
    return 0
}

@_cdecl("ds_options_set_psk")
public func ds_options_set_psk(_ o: OpaquePointer?, _ key: UnsafePointer<UInt8>?, _ length: Int, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let o, let key else { fail(err, DS_ERR_USAGE, "options or key is NULL"); return -1 }
    guard length >= SecurityOptions.minimumKeyLength else {
        fail(err, DS_ERR_USAGE, "a pre-shared key needs at least \(SecurityOptions.minimumKeyLength) bytes, got \(length)",
             hint: "use 32 random bytes, the same at both ends")
        return -1
    }
    unbox(o, as: OptionsBox.self).configuration.transfer.security = SecurityOptions(.psk(key: Array(UnsafeBufferPointer(start: key, count: length))))
    return 0
}

@_cdecl("ds_options_set_insecure")
public func ds_options_set_insecure(_ o: OpaquePointer?, _ allow: Int32) -> Int32 {
    guard let o else { return -1 }
    unbox(o, as: OptionsBox.self).configuration.transfer.allowInsecure = allow != 0
    return 0
}

@_cdecl("ds_options_set_downtime_limit_ns")
public func ds_options_set_downtime_limit_ns(_ o: OpaquePointer?, _ ns: UInt64, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let o else { fail(err, DS_ERR_USAGE, "options is NULL"); return -1 }
    guard ns > 0 else { fail(err, DS_ERR_USAGE, "the downtime limit must be more than 0 ns"); return -1 }
    unbox(o, as: OptionsBox.self).configuration.scheduler.downtimeLimit = duration(ns)
    return 0
}

@_cdecl("ds_options_set_policy")
public func ds_options_set_policy(_ o: OpaquePointer?, _ policy: Int32, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    let map: [Int32: NonConvergencePolicy] = [DS_POLICY_WAIT: .wait, DS_POLICY_SWITCHOVER: .switchover, DS_POLICY_ABORT: .abort]
    guard let o, let p = map[policy] else { fail(err, DS_ERR_USAGE, "policy \(policy) is not DS_POLICY_WAIT, _SWITCHOVER or _ABORT"); return -1 }
    unbox(o, as: OptionsBox.self).configuration.scheduler.policy = p
    return 0
}

@_cdecl("ds_options_set_deadline_ns")
public func ds_options_set_deadline_ns(_ o: OpaquePointer?, _ ns: UInt64) -> Int32 {
    guard let o else { return -1 }
    unbox(o, as: OptionsBox.self).configuration.scheduler.deadline = ns == 0 ? nil : duration(ns)
    return 0
}

@_cdecl("ds_options_set_timeout_ns")
public func ds_options_set_timeout_ns(_ o: OpaquePointer?, _ ns: UInt64, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let o, ns > 0 else { fail(err, DS_ERR_USAGE, "the timeout must be more than 0 ns"); return -1 }
    unbox(o, as: OptionsBox.self).configuration.transfer.timeout = duration(ns)
    return 0
}

@_cdecl("ds_options_set_backend")
public func ds_options_set_backend(_ o: OpaquePointer?, _ backend: Int32, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let o else { fail(err, DS_ERR_USAGE, "options is NULL"); return -1 }
    let b = unbox(o, as: OptionsBox.self)
    switch backend {
    case DS_BACKEND_AUTO: b.configuration.transfer.backend = nil
    case DS_BACKEND_IO_URING: b.configuration.transfer.backend = .ioUring
    case DS_BACKEND_BLOCKING: b.configuration.transfer.backend = .blocking
    default: fail(err, DS_ERR_USAGE, "backend \(backend) is not DS_BACKEND_AUTO, _IO_URING or _BLOCKING"); return -1
    }
    return 0
}

@_cdecl("ds_options_external_switchover")
public func ds_options_external_switchover(_ o: OpaquePointer?, _ on: Int32) -> Int32 {
    guard let o else { return -1 }
    unbox(o, as: OptionsBox.self).configuration.scheduler.switchover = on != 0 ? .external : .automatic
    return 0
}

@_cdecl("ds_options_hold_resume")
public func ds_options_hold_resume(_ o: OpaquePointer?, _ ns: UInt64) -> Int32 {
    guard let o else { return -1 }
    unbox(o, as: OptionsBox.self).resumeHold = ns == 0 ? nil : duration(ns)
    return 0
}

// MARK: Devices

@_cdecl("ds_device_from_spec")
public func ds_device_from_spec(_ spec: UnsafePointer<CChar>?, _ role: Int32, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> OpaquePointer? {
    guard let spec else { fail(err, DS_ERR_USAGE, "spec is NULL"); return nil }
    do throws(DeviceError) {
        let s = try DeviceSpec(String(cString: spec))
        let device = role == DS_ROLE_DESTINATION ? try s.makeDestination(size: nil) : try s.makeSource()
        return box(DeviceBox(device))
    } catch {
        fail(err, error.code == .badSpec ? DS_ERR_USAGE : DS_ERR_DEVICE, error.message)
        return nil
    }
}

@_cdecl("ds_device_from_ops")
public func ds_device_from_ops(_ ops: UnsafePointer<ds_device_ops>?, _ user: UnsafeMutableRawPointer?,
                               _ err: UnsafeMutablePointer<OpaquePointer?>?) -> OpaquePointer? {
    guard let ops else { fail(err, DS_ERR_USAGE, "ops is NULL"); return nil }
    // ABI 1.0's table is the smallest accepted; a larger one (from a newer header) is read only
    // as far as this library knows, a field this library has and the caller's lacks stays zero.
    let size = Int(ops.pointee.struct_size)
    guard size >= opsSizeV1_0 else {
        fail(err, DS_ERR_USAGE, "ds_device_ops.struct_size is \(size), but ABI 1.0's table has \(opsSizeV1_0) bytes",
             hint: "set struct_size = sizeof(ds_device_ops)")
        return nil
    }
    var table = ds_device_ops()
    withUnsafeMutableBytes(of: &table) { dst in
        dst.copyMemory(from: UnsafeRawBufferPointer(start: ops, count: min(size, MemoryLayout<ds_device_ops>.size)))
    }
    do throws(DeviceError) {
        let base = try OpsDevice(ops: table, user: user)
        let device: any MigratableDevice = base.ops.kind == UInt32(DS_DEVICE_ADDRESSABLE) ? OpsAddressableDevice(base) : OpsStreamDevice(base)
        return box(DeviceBox(device))
    } catch {
        fail(err, DS_ERR_USAGE, error.message)
        return nil
    }
}

/// The size of `ds_device_ops` in ABI 1.0 (the header this library was first built with).
private let opsSizeV1_0 = 136

@_cdecl("ds_device_free")
public func ds_device_free(_ d: OpaquePointer?) { release(d, as: DeviceBox.self) }

private func devices(_ list: UnsafePointer<OpaquePointer?>?, _ count: Int, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> [any MigratableDevice]? {
    guard let list, count >= 1, count <= 256 else { fail(err, DS_ERR_USAGE, "a session needs 1...256 devices, got \(count)"); return nil }
    var out: [any MigratableDevice] = []
    for i in 0..<count {
        guard let d = list[i] else { fail(err, DS_ERR_USAGE, "device \(i) is NULL"); return nil }
        out.append(unbox(d, as: DeviceBox.self).device)
    }
    return out
}

// MARK: Source

@_cdecl("ds_source_new")
public func ds_source_new(_ list: UnsafePointer<OpaquePointer?>?, _ count: Int, _ opts: OpaquePointer?,
                          _ err: UnsafeMutablePointer<OpaquePointer?>?) -> OpaquePointer? {
    guard let opts else { fail(err, DS_ERR_USAGE, "options is NULL"); return nil }
    guard let devs = devices(list, count, err) else { return nil }
    let config = unbox(opts, as: OptionsBox.self).configuration
    do throws(TransferError) { try config.transfer.validate() } catch { fail(err, error); return nil }
    // No `warn`: the session delivers every warning as a DS_EVENT_WARNING event too, and the
    // default would also print it on the host's stderr.
    return box(SourceBox(MigrationSource(devices: devs, configuration: config, warn: { _ in })))
}

private func startSource(_ s: OpaquePointer?, _ fn: ds_event_fn?, _ user: UnsafeMutableRawPointer?, _ err: UnsafeMutablePointer<OpaquePointer?>?,
                         _ run: @escaping @Sendable (MigrationSource, EventSink) -> MigrationReport) -> Int32 {
    guard let s else { fail(err, DS_ERR_USAGE, "source is NULL"); return -1 }
    let b = unbox(s, as: SourceBox.self)
    let sink = EventSink(fn: fn, user: user)
    let source = b.source
    do throws(TransferError) { try b.runner.start { run(source, sink) } } catch {
        fail(err, DS_ERR_STATE, error.message, hint: error.hint)
        return -1
    }
    return 0
}

@_cdecl("ds_source_connect")
public func ds_source_connect(_ s: OpaquePointer?, _ hostPort: UnsafePointer<CChar>?, _ fn: ds_event_fn?, _ user: UnsafeMutableRawPointer?,
                              _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let hostPort else { fail(err, DS_ERR_USAGE, "host_port is NULL"); return -1 }
    let endpoint: Endpoint
    do throws(TransferError) { endpoint = try Endpoint.parse(String(cString: hostPort)) } catch { fail(err, error); return -1 }
    return startSource(s, fn, user, err) { source, sink in source.migrate(to: endpoint) { sink.send($0) } }
}

@_cdecl("ds_source_attach_fds")
public func ds_source_attach_fds(_ s: OpaquePointer?, _ fds: UnsafePointer<Int32>?, _ count: Int, _ fn: ds_event_fn?,
                                 _ user: UnsafeMutableRawPointer?, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let fds, count > 0 else { fail(err, DS_ERR_USAGE, "no fds were given"); return -1 }
    let list = Array(UnsafeBufferPointer(start: fds, count: count))
    let rc = startSource(s, fn, user, err) { source, sink in source.migrate(over: list) { sink.send($0) } }
    // The library took the fds: when no session will run, it closes them here (the header's
    // promise: closed when the session ends, also on failure).
    if rc != 0 { for fd in list { close(fd) } }
    return rc
}

@_cdecl("ds_source_wait")
public func ds_source_wait(_ s: OpaquePointer?, _ timeoutNs: UInt64, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let s else { fail(err, DS_ERR_USAGE, "source is NULL"); return -1 }
    return waitResult(unbox(s, as: SourceBox.self).runner, timeoutNs, err)
}

@_cdecl("ds_source_switchover")
public func ds_source_switchover(_ s: OpaquePointer?) -> Int32 {
    guard let s else { return -1 }
    unbox(s, as: SourceBox.self).source.switchover()
    return 0
}

@_cdecl("ds_source_set_external_pending")
public func ds_source_set_external_pending(_ s: OpaquePointer?, _ bytes: UInt64) -> Int32 {
    guard let s else { return -1 }
    unbox(s, as: SourceBox.self).source.externalPendingBytes = bytes
    return 0
}

@_cdecl("ds_source_cancel")
public func ds_source_cancel(_ s: OpaquePointer?) -> Int32 {
    guard let s else { return -1 }
    return unbox(s, as: SourceBox.self).source.cancel() ? 1 : 0
}

@_cdecl("ds_source_stats")
public func ds_source_stats(_ s: OpaquePointer?, _ out: UnsafeMutablePointer<ds_stats>?) -> Int32 {
    guard let s, let out, out.pointee.struct_size >= 8 else { return -1 }
    fill(out, statsValue(unbox(s, as: SourceBox.self).source.statistics), callerSize: out.pointee.struct_size)
    return 0
}

@_cdecl("ds_source_report")
public func ds_source_report(_ s: OpaquePointer?, _ out: UnsafeMutablePointer<ds_report>?) -> Int32 {
    guard let s, let out, out.pointee.struct_size >= 8, let r = unbox(s, as: SourceBox.self).runner.report else { return -1 }
    fill(out, reportValue(r), callerSize: out.pointee.struct_size)
    return 0
}

@_cdecl("ds_source_free")
public func ds_source_free(_ s: OpaquePointer?) { release(s, as: SourceBox.self) }

// MARK: Destination

@_cdecl("ds_dest_new")
public func ds_dest_new(_ list: UnsafePointer<OpaquePointer?>?, _ count: Int, _ opts: OpaquePointer?,
                        _ err: UnsafeMutablePointer<OpaquePointer?>?) -> OpaquePointer? {
    guard let opts else { fail(err, DS_ERR_USAGE, "options is NULL"); return nil }
    guard let devs = devices(list, count, err) else { return nil }
    let o = OptionsBox(copying: unbox(opts, as: OptionsBox.self))
    do throws(TransferError) { try o.configuration.transfer.validate() } catch { fail(err, error); return nil }
    return box(DestBox(devices: devs, options: o))
}

@_cdecl("ds_dest_listen")
public func ds_dest_listen(_ d: OpaquePointer?, _ hostPort: UnsafePointer<CChar>?, _ port: UnsafeMutablePointer<UInt16>?,
                           _ fn: ds_event_fn?, _ user: UnsafeMutableRawPointer?, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let d, let hostPort else { fail(err, DS_ERR_USAGE, "dest or host_port is NULL"); return -1 }
    let b = unbox(d, as: DestBox.self)
    guard b.destination == nil else { fail(err, DS_ERR_STATE, "this destination is already listening"); return -1 }
    do throws(TransferError) {
        let endpoint = try Endpoint.parse(String(cString: hostPort))
        let sink = EventSink(fn: fn, user: user)
        let dest = try MigrationDestination(listen: endpoint, devices: b.devices, options: b.options.configuration.transfer, warn: sink.warn)
        port?.pointee = dest.endpoint.port
        try b.begin(dest, sink: sink)
    } catch {
        fail(err, error)
        return -1
    }
    return 0
}

@_cdecl("ds_dest_attach_fds")
public func ds_dest_attach_fds(_ d: OpaquePointer?, _ fds: UnsafePointer<Int32>?, _ count: Int, _ fn: ds_event_fn?,
                               _ user: UnsafeMutableRawPointer?, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let fds, count > 0 else { fail(err, DS_ERR_USAGE, "no fds were given"); return -1 }
    let list = Array(UnsafeBufferPointer(start: fds, count: count))
    guard let d else { for fd in list { close(fd) }; fail(err, DS_ERR_USAGE, "dest is NULL"); return -1 }
    let b = unbox(d, as: DestBox.self)
    guard b.destination == nil else {
        for fd in list { close(fd) }
        fail(err, DS_ERR_STATE, "this destination has its session already")
        return -1
    }
    do throws(TransferError) {
        let sink = EventSink(fn: fn, user: user)
        let dest = try MigrationDestination(adopting: list, devices: b.devices,
                                            options: b.options.configuration.transfer, warn: sink.warn)
        try b.begin(dest, sink: sink)
    } catch {
        fail(err, error)
        return -1
    }
    return 0
}

@_cdecl("ds_dest_wait")
public func ds_dest_wait(_ d: OpaquePointer?, _ timeoutNs: UInt64, _ err: UnsafeMutablePointer<OpaquePointer?>?) -> Int32 {
    guard let d else { fail(err, DS_ERR_USAGE, "dest is NULL"); return -1 }
    return waitResult(unbox(d, as: DestBox.self).runner, timeoutNs, err)
}

@_cdecl("ds_dest_resume")
public func ds_dest_resume(_ d: OpaquePointer?) -> Int32 {
    guard let d, let dest = unbox(d, as: DestBox.self).destination else { return -1 }
    dest.resume()
    return 0
}

@_cdecl("ds_dest_cancel")
public func ds_dest_cancel(_ d: OpaquePointer?) -> Int32 {
    guard let d, let dest = unbox(d, as: DestBox.self).destination else { return -1 }
    return dest.cancel() ? 1 : 0
}

@_cdecl("ds_dest_stats")
public func ds_dest_stats(_ d: OpaquePointer?, _ out: UnsafeMutablePointer<ds_stats>?) -> Int32 {
    guard let d, let out, out.pointee.struct_size >= 8 else { return -1 }
    let stats = unbox(d, as: DestBox.self).destination?.statistics ?? MigrationStatistics()
    fill(out, statsValue(stats), callerSize: out.pointee.struct_size)
    return 0
}

@_cdecl("ds_dest_report")
public func ds_dest_report(_ d: OpaquePointer?, _ out: UnsafeMutablePointer<ds_report>?) -> Int32 {
    guard let d, let out, out.pointee.struct_size >= 8, let r = unbox(d, as: DestBox.self).runner.report else { return -1 }
    fill(out, reportValue(r), callerSize: out.pointee.struct_size)
    return 0
}

@_cdecl("ds_dest_free")
public func ds_dest_free(_ d: OpaquePointer?) { release(d, as: DestBox.self) }
