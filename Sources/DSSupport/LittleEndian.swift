/// Little-endian loads and stores: the wire format, the emulated VFIO stream and every record
/// the project writes are little-endian. Raw-buffer accessors are bounds-checked by the caller's
/// length check; array readers trap on a bad offset (check the count first).
extension UnsafeMutableRawBufferPointer {
    @inlinable package func storeLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}

extension UnsafeRawBufferPointer {
    @inlinable package func loadLE<T: FixedWidthInteger>(at offset: Int, as: T.Type) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension Array where Element == UInt8 {
    /// Appends `value` in little-endian byte order.
    @inlinable package mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// The little-endian `T` at `offset` (the caller has checked `offset + size <= count`).
    @inlinable package func loadLE<T: FixedWidthInteger>(at offset: Int, as: T.Type) -> T {
        withUnsafeBytes { $0.loadLE(at: offset, as: T.self) }
    }
}
