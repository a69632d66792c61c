// framewise's fused instance normalisation for ONNX Runtime's CUDA provider (worker/src/norm_op.rs).
//
// y = act((x - mean) / sqrt(var + eps) * scale * gamma + bias * gamma + beta), per image and
// channel of an NCHW float tensor, act = ReLU or identity: one InstanceNormalization, the
// style's per-channel Mul and Add that follow it, and the ReLU after them, in two passes over
// memory where ONNX Runtime runs cuDNN's batch-norm kernel (one block per channel: 32 blocks on
// a 132-SM GPU for the first layer) and three element-wise kernels.
//
// Pass 1 (fw_norm_stats): blocks (split, image·channel) sum x - k and (x - k)^2 over a chunk,
// with k the channel's first value (a shift that keeps the variance from cancelling when the
// mean is large). Pass 2 (fw_norm_apply): each block adds its channel's partial sums in double,
// folds the statistics and the affine into y = (x - mean) * a + b and writes its chunk.
//
// Built to PTX by scripts/ptx.sh (nvcc from PyPI); the driver compiles the PTX for the GPU it
// runs on. Keep the kernels' parameter lists in step with norm_op.rs.

#define THREADS 256

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Each warp's sums of a and b into wa[warp] and wb[warp] (then __syncthreads and add them).
template <typename T>
__device__ __forceinline__ void warp_sums_to_shared(T a, T b, T* wa, T* wb) {
    a = warp_sum(a);
    b = warp_sum(b);
    if (threadIdx.x % 32 == 0) {
        wa[threadIdx.x / 32] = a;
        wb[threadIdx.x / 32] = b;
    }
}

// Sums of x - k and (x - k)^2 over elements [start, end) of one channel `xc`.
__device__ __forceinline__ void chunk_sums(const float* __restrict__ xc, float k, long long start,
                                           long long end, int vec, float& s1, float& s2) {
    if (vec) {
        const float4* v = reinterpret_cast<const float4*>(xc);
        for (long long i = start / 4 + threadIdx.x; i < end / 4; i += blockDim.x) {
            float4 q = v[i];
            float a = q.x - k, b = q.y - k, c = q.z - k, d = q.w - k;
            s1 += (a + b) + (c + d);
            s2 += (a * a + b * b) + (c * c + d * d);
        }
    } else {
        for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
            float a = xc[i] - k;
            s1 += a;
            s2 += a * a;
        }
    }
}

// grid (splits, images * channels), THREADS threads. partial: per image·channel, `splits` pairs
// of sums then the shift k (kept there so fw_norm_apply may write y over x in place).
extern "C" __global__ void __launch_bounds__(THREADS)
fw_norm_stats(const float* __restrict__ x, float* __restrict__ partial, long long hw, int chunk,
              int vec) {
    const long long ch = blockIdx.y;
    const float* xc = x + ch * hw;
    const float k = xc[0];
    const long long start = (long long)blockIdx.x * chunk;
    const long long end = min(start + (long long)chunk, hw);
    float s1 = 0.f, s2 = 0.f;
    chunk_sums(xc, k, start, end, vec, s1, s2);
    __shared__ float w1[THREADS / 32], w2[THREADS / 32];
    warp_sums_to_shared(s1, s2, w1, w2);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (warp == 0) {
        s1 = lane < THREADS / 32 ? w1[lane] : 0.f;
        s2 = lane < THREADS / 32 ? w2[lane] : 0.f;
        s1 = warp_sum(s1);
        s2 = warp_sum(s2);
        if (lane == 0) {
            float* p = partial + ch * (2 * gridDim.x + 1);
            p[2 * blockIdx.x] = s1;
            p[2 * blockIdx.x + 1] = s2;
            if (blockIdx.x == 0) p[2 * gridDim.x] = k;
        }
    }
}

// Reflection of index i into [0, n) (ONNX Pad's "reflect": the edge value is not repeated).
__device__ __forceinline__ int reflect(int i, int n) {
    i = i < 0 ? -i : i;
    return i >= n ? 2 * n - 2 - i : i;
}

// grid (blocks per output plane: chunks of `chunk` values, or with padding groups of
// max(1, chunk / out_w) rows; images * channels), THREADS threads. scale and bias have
// `channels` values; gamma and beta `channels` (shared by every image) or images * channels
// values, or, with styles > 0, are [styles, channels] matrices mixed by the weights `mix`
// [styles] (gamma_c = sum_s mix_s * gamma[s, c]: a multi-style model's conditional
// normalisation). The input plane is hw = in_h x in_w values; the output plane out_h x out_w,
// the input reflected by pad_top / pad_left (and whatever bottom and right padding out_h and
// out_w leave): the Pad that feeds the next convolution, folded in.
extern "C" __global__ void __launch_bounds__(THREADS)
fw_norm_apply(const float* x, float* y,  // y may be x (in place, unpadded)
              const float* __restrict__ partial, int splits, long long hw, int chunk, int vec,
              const float* __restrict__ scale, const float* __restrict__ bias,
              const float* __restrict__ gamma, const float* __restrict__ beta, int channels,
              int gamma_per_image, int beta_per_image, float eps, int relu,
              const float* __restrict__ mix, int styles, int in_w, int out_h, int out_w,
              int pad_top, int pad_left) {
    const long long ch = blockIdx.y;
    const int c = (int)(ch % channels);
    const long long out_hw = (long long)out_h * out_w;
    const float* xc = x + ch * hw;
    float* yc = y + ch * out_hw;
    __shared__ double w1[THREADS / 32], w2[THREADS / 32], gb[2];
    __shared__ float coef[3];
    const float* p = partial + ch * (2 * splits + 1);
    double d1 = 0.0, d2 = 0.0;
    for (int i = threadIdx.x; i < splits; i += blockDim.x) {
        d1 += (double)p[2 * i];
        d2 += (double)p[2 * i + 1];
    }
    warp_sums_to_shared(d1, d2, w1, w2);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // Warp 0 mixes the style's gamma and beta, one style per lane (a loop in one thread made
    // every block wait for 2 x styles dependent loads).
    if (warp == 0) {
        double g = 0.0, bt = 0.0;
        if (styles > 0) {
            for (int i = lane; i < styles; i += 32) {
                g += (double)mix[i] * (double)gamma[i * channels + c];
                bt += (double)mix[i] * (double)beta[i * channels + c];
            }
            g = warp_sum(g);
            bt = warp_sum(bt);
        } else if (lane == 0) {
            g = (double)gamma[gamma_per_image ? ch : c];
            bt = (double)beta[beta_per_image ? ch : c];
        }
        if (lane == 0) {
            gb[0] = g;
            gb[1] = bt;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double t1 = 0.0, t2 = 0.0;
        for (int i = 0; i < THREADS / 32; i++) {
            t1 += w1[i];
            t2 += w2[i];
        }
        const double n = (double)hw;
        const double m = t1 / n;
        double var = t2 / n - m * m;
        if (var < 0.0) var = 0.0;
        const double mean = (double)p[2 * splits] + m;
        const double rstd = 1.0 / sqrt(var + (double)eps);
        const double g = gb[0], bt = gb[1];
        const double s = (double)scale[c] * rstd * g;
        coef[0] = (float)mean;
        coef[1] = (float)s;
        coef[2] = (float)((double)bias[c] * g + bt);
    }
    __syncthreads();
    // (x - mean) * a + b: folding the mean into b would lose digits when it is large.
    const float mean = coef[0], a = coef[1], b = coef[2];
    const long long start = (long long)blockIdx.x * chunk;
    const long long end = min(start + (long long)chunk, out_hw);
    if (out_hw != hw || out_w != in_w) {
        // Padded: whole output rows per block (max(1, chunk / out_w) of them), threads along
        // the row, so reads and writes stay contiguous and no value needs a division.
        const int in_h = (int)(hw / in_w);
        const int rows = max(1, chunk / out_w);
        const int r0 = blockIdx.x * rows, r1 = min(r0 + rows, out_h);
        for (int r = r0; r < r1; r++) {
            const float* src = xc + (long long)reflect(r - pad_top, in_h) * in_w;
            float* dst = yc + (long long)r * out_w;
            for (int col = threadIdx.x; col < out_w; col += blockDim.x) {
                const float o = fmaf(src[reflect(col - pad_left, in_w)] - mean, a, b);
                dst[col] = relu ? fmaxf(o, 0.f) : o;
            }
        }
    } else if (vec) {
        const float4* v = reinterpret_cast<const float4*>(xc);
        float4* o = reinterpret_cast<float4*>(yc);
        for (long long i = start / 4 + threadIdx.x; i < end / 4; i += blockDim.x) {
            float4 q = v[i];
            q.x = fmaf(q.x - mean, a, b);
            q.y = fmaf(q.y - mean, a, b);
            q.z = fmaf(q.z - mean, a, b);
            q.w = fmaf(q.w - mean, a, b);
            if (relu) {
                q.x = fmaxf(q.x, 0.f);
                q.y = fmaxf(q.y, 0.f);
                q.z = fmaxf(q.z, 0.f);
                q.w = fmaxf(q.w, 0.f);
            }
            o[i] = q;
        }
    } else {
        for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
            float r = fmaf(xc[i] - mean, a, b);
            yc[i] = relu ? fmaxf(r, 0.f) : r;
        }
    }
}
