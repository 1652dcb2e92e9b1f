// The embedding API: one import gives the whole engine.
@_exported import DSWire
@_exported import DSCodec
@_exported import DSRing
@_exported import DSTransport
@_exported import DSDevices
@_exported import DSScheduler
