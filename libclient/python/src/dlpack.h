// The DLPack ABI (dmlc/dlpack v0.6-0.8, unversioned DLManagedTensor): the structs every
// producer and consumer in the Python ecosystem (torch, numpy, cupy, jax) exchange inside a
// PyCapsule named "dltensor".  Declared here rather than taken from libdlpack-dev: the layout
// is frozen by the spec and these few lines are all the module needs.
#pragma once

#include <cstdint>

extern "C" {

enum DLDeviceType : int32_t {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,
  kDLROCM = 10,
  kDLCUDAManaged = 13,
};

struct DLDevice {
  DLDeviceType device_type;
  int32_t device_id;
};

enum DLDataTypeCode : uint8_t {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
  kDLBfloat = 4,
};

struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // elements; NULL = compact row-major
  uint64_t byte_offset;
};

// Ownership: the consumer calls deleter(self) once it no longer needs the memory.
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

}  // extern "C"
