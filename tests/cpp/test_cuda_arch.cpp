// Which GPUs a CUDA build runs on (src/core/cuda_arch.h): the rule behind the "no CUDA kernels for this GPU" error.
#include <gtest/gtest.h>

#include "core/cuda_arch.h"

using sla::cuda_archs_run_on;

TEST(CudaArch, DefaultBuildRunsOnAmpereAndHopper) {
  EXPECT_TRUE(cuda_archs_run_on("80,90a", 8, 0));  // A100
  EXPECT_TRUE(cuda_archs_run_on("80,90a", 8, 6));  // 8.x cards run sm_80 code
  EXPECT_TRUE(cuda_archs_run_on("80,90a", 8, 9));
  EXPECT_TRUE(cuda_archs_run_on("80,90a", 9, 0));  // H100 / H200
}

TEST(CudaArch, NoKernelsForOtherMajorsOrOlderMinors) {
  EXPECT_FALSE(cuda_archs_run_on("80,90a", 10, 0));  // Blackwell datacenter
  EXPECT_FALSE(cuda_archs_run_on("80,90a", 12, 0));  // Blackwell consumer
  EXPECT_FALSE(cuda_archs_run_on("80,90a", 7, 5));
  EXPECT_FALSE(cuda_archs_run_on("86", 8, 0));  // sm_86 code does not run on 8.0
}

TEST(CudaArch, ArchSpecificTargetsNeedTheExactCapability) {
  EXPECT_FALSE(cuda_archs_run_on("90a", 8, 0));
  EXPECT_TRUE(cuda_archs_run_on("90a", 9, 0));
  EXPECT_FALSE(cuda_archs_run_on("90a", 9, 1));
  EXPECT_TRUE(cuda_archs_run_on("90", 9, 1));
}

TEST(CudaArch, SeparatorsAndJunk) {
  EXPECT_TRUE(cuda_archs_run_on("80;90a", 9, 0));
  EXPECT_FALSE(cuda_archs_run_on("", 9, 0));
  EXPECT_FALSE(cuda_archs_run_on("unknown", 9, 0));
  EXPECT_TRUE(cuda_archs_run_on("x,,90a,", 9, 0));
}
