import Testing
@testable import DSSimulation

@Suite("VFIO migration v1")
struct VFIOv1Tests {
    @Test func namedStates() {
        #expect(VFIOv1DeviceState.stop.rawValue == 0)
        #expect(VFIOv1DeviceState.running.rawValue == 1)
        #expect(VFIOv1DeviceState.stopAndCopy.rawValue == 2)
        #expect(VFIOv1DeviceState.preCopy.rawValue == 3)
        #expect(VFIOv1DeviceState.resuming.rawValue == 4)
        #expect(VFIOv1DeviceState.mask == 7)
        #expect((0...7).map { VFIOv1DeviceState(rawValue: $0).description } ==
                ["STOP", "RUNNING", "STOP_AND_COPY", "PRE_COPY", "RESUMING", "INVALID(0x5)", "ERROR", "INVALID(0x7)"])
    }

    /// VFIO_DEVICE_STATE_VALID and _IS_ERROR, every 3-bit value plus bits above the mask.
    @Test func validAndError() {
        let valid = (UInt32(0)...7).filter { VFIOv1DeviceState(rawValue: $0).isValid }
        let error = (UInt32(0)...7).filter { VFIOv1DeviceState(rawValue: $0).isError }
        #expect(valid == [0, 1, 2, 3, 4])
        #expect(error == [6])
        // Bits above the mask: VALID masks only when RESUMING is set; IS_ERROR masks always.
        #expect(VFIOv1DeviceState(rawValue: 0x8 | 4).isValid)
        #expect(VFIOv1DeviceState(rawValue: 0x8 | 2).isValid)
        #expect(VFIOv1DeviceState(rawValue: 0x10 | 6).isError)
        #expect(VFIOv1DeviceState(rawValue: 0x10 | 1).settingError.rawValue == 0x16)
    }

    @Test func regionLayout() {
        let r = VFIOv1MigrationRegion(deviceState: .preCopy, pendingBytes: 0x10, dataOffset: 0x1000, dataSize: 0x20)
        let b = r.encoded()
        #expect(VFIOv1MigrationRegion.headerSize == 32)
        #expect(b.count == 32)
        #expect(b[0] == 3 && b[4] == 0)
        #expect(b[8] == 0x10 && b[16] == 0x00 && b[17] == 0x10 && b[24] == 0x20)
        #expect(VFIOv1MigrationRegion.decode(b) == r)
        #expect(VFIOv1MigrationRegion.decode(Array(b[0..<31])) == nil)
    }

    @Test func sourceReadProtocol() throws {
        let image: [UInt8] = (0..<23).map { UInt8($0 * 7 & 0xff) }
        let src = VFIOv1SimulatedDevice(state: image, windowSize: 5)
        try src.writeDeviceState(.preCopy)
        var out: [UInt8] = []
        var pendings: [UInt64] = []
        while true {
            let pending = try src.readPendingBytes()
            pendings.append(pending)
            if pending == 0 { break }
            let offset = try src.readDataOffset()
            #expect(offset >= UInt64(VFIOv1MigrationRegion.headerSize))
            let size = try src.readDataSize()
            #expect(size > 0 && size <= 5)
            out += try src.readData(at: offset, count: Int(size))
        }
        #expect(out == image)
        #expect(pendings == [23, 18, 13, 8, 3, 0])
        // Stop-and-copy after pre-copy: nothing left.
        try src.writeDeviceState(.stopAndCopy)
        #expect(try src.drain() == [])
    }

    @Test func destinationWriteProtocol() throws {
        let image: [UInt8] = Array(repeating: 0xAB, count: 17) + [1, 2, 3]
        let src = VFIOv1SimulatedDevice(state: image, windowSize: 8)
        try src.writeDeviceState(.stopAndCopy)
        let bytes = try src.drain()
        let dst = VFIOv1SimulatedDevice(windowSize: 8)
        try dst.writeDeviceState(.resuming)
        try dst.load(bytes)
        try dst.writeDeviceState(.running)
        #expect(dst.state == image)
    }

    @Test func protocolViolationsAndInvalidStates() throws {
        let d = VFIOv1SimulatedDevice(state: [1, 2, 3])
        #expect(throws: VFIOv1SimulatedDevice.Failure.invalidState(VFIOv1DeviceState(rawValue: 5))) {
            try d.writeDeviceState(VFIOv1DeviceState(rawValue: 5))
        }
        #expect(throws: VFIOv1SimulatedDevice.Failure.invalidState(VFIOv1DeviceState(rawValue: 6))) {
            try d.writeDeviceState(VFIOv1DeviceState(rawValue: 6))
        }
        // pending_bytes needs _SAVING.
        #expect(throws: VFIOv1SimulatedDevice.Failure.self) { _ = try d.readPendingBytes() }
        try d.writeDeviceState(.stopAndCopy)
        // data_size before data_offset.
        #expect(throws: VFIOv1SimulatedDevice.Failure.self) { _ = try d.readDataSize() }
        #expect(try d.readPendingBytes() == 3)
        _ = try d.readDataOffset()
        #expect(try d.readDataSize() == 3)
        #expect(try d.readPendingBytes() == 0)
        // data_offset with nothing pending.
        #expect(throws: VFIOv1SimulatedDevice.Failure.self) { _ = try d.readDataOffset() }
        // Data written on a source.
        #expect(throws: VFIOv1SimulatedDevice.Failure.self) {
            try d.writeData([1], at: VFIOv1SimulatedDevice.dataSectionOffset)
        }
    }
}
