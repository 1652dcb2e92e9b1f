// The emulated VFIO device's stream parser (EmulatedVFIODevice's loader): a destination device
// in RESUMING is written the input as its migration stream, in pieces, then moved to STOP, which
// validates the stream (trailer, record count, stream digest, state digest).
//
// Input: [size u8][piece u8][stream ...]
//   size   the device's size: (size % 16 + 1) × 4 KiB (a real stream names its size in its header);
//   piece  0: the stream in one write; n: writes of n bytes (the loader takes a stream split anywhere).
// Promised: no trap and no memory error; once a write fails, every later write and the STOP fail
// with `.malformedStream` and the device is left in ERROR; a STOP that succeeds leaves it in STOP.
import DSDevices
import DSSimulation
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVFIOStream(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let deviceSize = UInt64(input.u8() % 16 + 1) * 4096
    let piece = Int(input.u8())
    let stream = input.rest()
    let device: EmulatedVFIODevice
    do { device = try EmulatedVFIODevice(destinationSize: deviceSize) } catch {
        require(false, "cannot make a \(deviceSize)-byte destination: \(error)")
        return 0
    }
    defer { device.close() }
    require(device.state == .resuming, "a destination starts in \(device.state)")

    var failure: DeviceError?
    var at = 0
    while at < stream.count {
        let n = piece == 0 ? stream.count - at : min(piece, stream.count - at)
        do throws(DeviceError) {
            try device.write(UnsafeRawBufferPointer(rebasing: stream[at..<(at + n)]))
        } catch {
            require(error.code == .malformedStream, "a write failed with \(error.code): \(error)")
            failure = error
            break
        }
        at += n
    }
    if let failure {
        // The loader remembers its fault: later writes repeat it.
        var one: UInt8 = 0
        do throws(DeviceError) {
            try withUnsafeBytes(of: &one) { b throws(DeviceError) in try device.write(b) }
            require(false, "a write after a fault was accepted")
        } catch {
            require(error == failure, "a write after a fault failed differently: \(error)")
        }
    }
    do throws(DeviceError) {
        try device.setState(.stop)
        require(failure == nil, "STOP accepted a stream whose write failed: \(failure!)")
        require(device.state == .stop, "a validated device is in \(device.state)")
    } catch {
        require(error.code == .malformedStream, "STOP failed with \(error.code): \(error)")
        if let failure { require(error == failure, "STOP failed differently from the write: \(error)") }
        require(device.state == .error, "a device whose stream was refused is in \(device.state)")
    }
    return 0
}
