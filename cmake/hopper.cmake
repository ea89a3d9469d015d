# The Hopper (sm90a) kernels: a static library of .cu files linked into the
# extension. CUTLASS/CuTe headers come from the nvidia-cutlass wheel
# (cutlass_library), never vendored.
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
if(CUDAToolkit_VERSION VERSION_LESS 12.3)
  message(FATAL_ERROR "jax_fa3: the Hopper kernels need CUDA >= 12.3, found ${CUDAToolkit_VERSION}")
endif()

execute_process(COMMAND "${Python_EXECUTABLE}" -c
                "import cutlass_library, os; print(os.path.join(cutlass_library.source_path, 'include'))"
                OUTPUT_STRIP_TRAILING_WHITESPACE OUTPUT_VARIABLE CUTLASS_INCLUDE
                RESULT_VARIABLE _cutlass_rc)
if(NOT _cutlass_rc EQUAL 0 OR NOT EXISTS "${CUTLASS_INCLUDE}/cute/tensor.hpp")
  message(FATAL_ERROR "jax_fa3: CUTLASS headers not found; pip install nvidia-cutlass")
endif()
message(STATUS "jax_fa3: CUTLASS headers in ${CUTLASS_INCLUDE}")
message(STATUS "jax_fa3: building Hopper kernels for head dims ${JAX_FA3_HEAD_DIMS}")

file(GLOB _hopper_common CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/cc/hopper/*.cu")
set(_hopper_inst "")
set(_hopper_defs "")
foreach(d IN LISTS JAX_FA3_HEAD_DIMS)
  file(GLOB _f CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/cc/hopper/instantiations/*_hdim${d}_*.cu")
  list(APPEND _hopper_inst ${_f})
  list(APPEND _hopper_defs "JAX_FA3_HAS_HDIM${d}=1")
endforeach()

add_library(jax_fa3_hopper STATIC ${_hopper_common} ${_hopper_inst})

# The FA3-style backward (cc/hopper/*bwd*, instantiations/bwd_*): ON by
# default. OFF (-DJAX_FA3_BWD=OFF, or the env var JAX_FA3_BWD=0) halves the
# build: the bwd TUs compile to nothing and run_bwd reports that the backward
# was not built.
set(_bwd_default ON)
if(DEFINED ENV{JAX_FA3_BWD} AND NOT "$ENV{JAX_FA3_BWD}")
  set(_bwd_default OFF)
endif()
option(JAX_FA3_BWD "Build the Hopper backward kernels" ${_bwd_default})
if(JAX_FA3_BWD)
  target_compile_definitions(jax_fa3_hopper PRIVATE JAX_FA3_BWD=1)
else()
  message(STATUS "jax_fa3: Hopper backward OFF")
endif()

# A CuTe attention TU can take ~10 GB of compiler memory: bound concurrent
# nvcc jobs by memory (one per ~12 GB; 1 on a 24 GB CI machine, 10 on the
# 128 GB GPU machine). JAX_FA3_NVCC_JOBS overrides.
cmake_host_system_information(RESULT _mem_mib QUERY TOTAL_PHYSICAL_MEMORY)
math(EXPR _nvcc_jobs "${_mem_mib} / 12288")
if(_nvcc_jobs LESS 1)
  set(_nvcc_jobs 1)
endif()
if(DEFINED ENV{JAX_FA3_NVCC_JOBS})
  set(_nvcc_jobs "$ENV{JAX_FA3_NVCC_JOBS}")
endif()
message(STATUS "jax_fa3: at most ${_nvcc_jobs} nvcc job(s) at once")
set_property(GLOBAL APPEND PROPERTY JOB_POOLS jax_fa3_nvcc=${_nvcc_jobs})
set_property(TARGET jax_fa3_hopper PROPERTY JOB_POOL_COMPILE jax_fa3_nvcc)
target_include_directories(jax_fa3_hopper PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}" "${CUTLASS_INCLUDE}")
# CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED: the 64xNx16 WGMMA atoms with N = 96
# and 192 (P*V for head dims 96 and 192) are behind it (kernel_traits.h also
# sets it, this keeps the include order from mattering).
target_compile_definitions(jax_fa3_hopper PRIVATE ${_hopper_defs} NDEBUG
                           CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED)
set_target_properties(jax_fa3_hopper PROPERTIES
  CUDA_ARCHITECTURES OFF            # we pass -gencode ourselves: sm_90a, not sm_90
  CUDA_STANDARD 17
  CUDA_SEPARABLE_COMPILATION OFF
  POSITION_INDEPENDENT_CODE ON)
# -DNDEBUG is not optional: without it ptxas serialises wgmma (C7510).
# The `a` target is needed for wgmma and setmaxnreg.
target_compile_options(jax_fa3_hopper PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr
  --use_fast_math -O3 -lineinfo -Xptxas=--warn-on-spills -DNDEBUG>)
# No libcuda link: CuTe reaches cuTensorMapEncodeTiled through the runtime's
# driver entry point, so the module loads on machines with only the driver.
target_link_libraries(jax_fa3_hopper PUBLIC CUDA::cudart_static)
