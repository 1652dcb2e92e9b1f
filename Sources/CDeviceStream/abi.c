/* The C ABI's header target: devicestream.h (in include/) is the contract. The Swift target
 * DeviceStreamC imports it, so the structs and callback types it implements are the header's
 * own. This file only gives SwiftPM a source to build. */
#include "devicestream.h"
