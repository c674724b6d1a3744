// The CUDA runtime calls that kernels' launchers and glue make (cudaGetLastError, cudaGetErrorString), renamed
// before CUDA's headers declare them, so that the emulation (runtime.cpp) answers them instead of libcudart.
#pragma once

#define cudaGetLastError cuda_emulation_get_last_error
#define cudaPeekAtLastError cuda_emulation_peek_at_last_error
#define cudaGetErrorString cuda_emulation_get_error_string
