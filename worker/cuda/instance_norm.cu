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
// The mean, factor and offset of plane `ch` (image x channels + channel) into coef[0..3]:
// y = act((x - mean) * coef[1] + coef[2]) with mean = coef[0]. Called by every thread of the
// block (it synchronises); its partial sums are the ones fw_norm_stats* wrote.
__device__ __forceinline__ void plane_coefficients(
    const float* __restrict__ partial, int splits, long long hw, long long ch, int c,
    const float* __restrict__ scale, const float* __restrict__ bias,
    const float* __restrict__ gamma, const float* __restrict__ beta, int channels,
    int gamma_per_image, int beta_per_image, float eps, const float* __restrict__ mix, int styles,
    float* coef) {
    __shared__ double w1[THREADS / 32], w2[THREADS / 32], gb[2];
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
}

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
    __shared__ float coef[3];
    plane_coefficients(partial, splits, hw, ch, c, scale, bias, gamma, beta, channels,
                       gamma_per_image, beta_per_image, eps, mix, styles, coef);
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

// ---------------------------------------------------------------------------------------------
// Channels last: x [N, H, W, C] (what cuDNN's tensor-core convolutions read and write, so an
// NHWC model needs no layout transposes around them), float or half values (the sums and the
// coefficients stay float / double). Three launches: fw_norm_stats_nhwc_* (grid (splits,
// images): a chunk of pixels, all channels; same partial layout as fw_norm_stats),
// fw_norm_coefficients (grid images * channels: coef[ch] = mean, factor, offset),
// fw_norm_apply_nhwc_* (grid (out_h, images): one output row, reflect-padded, per block).

__device__ __forceinline__ float load(const float* p) { return *p; }
// Half values as their 16 bits (cuda_fp16.h needs CCCL headers the PyPI nvcc lacks).
typedef unsigned short half_bits;
__device__ __forceinline__ float load(const half_bits* p) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(*p));
    return f;
}
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(half_bits* p, float v) {
    half_bits h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    *p = h;
}

// Where pixel (y, x) of an image w pixels wide lives, in pixels from the image's start: row_at(y)
// + col_at(x). Plain [H, W], or with s2d space to depth [ceil(H/2), ceil(W/2), 2, 2] (a 2x2
// block of pixels is one pixel of 4C channels, (2 * (y % 2) + x % 2) * C + c), the layout a
// 9x9 convolution on few channels runs as a 5x5 one on 4x as many (optimize::space_to_depth).
__device__ __forceinline__ long long row_at(int y, int w, int s2d) {
    return s2d ? (long long)(y >> 1) * (((w + 1) >> 1) * 4) + (y & 1) * 2 : (long long)y * w;
}
__device__ __forceinline__ int col_at(int x, int s2d) { return s2d ? (x >> 1) * 4 + (x & 1) : x; }
// Pixels one h x w image takes (space to depth rounds H and W up to even).
__device__ __forceinline__ long long image_pixels(int h, int w, int s2d) {
    return s2d ? 4LL * ((h + 1) >> 1) * ((w + 1) >> 1) : (long long)h * w;
}

// V values of x at p into o (float): one 16-byte load when V > 1 (p then 16-byte aligned).
template <int V, typename T>
__device__ __forceinline__ void load_v(const T* p, float* o) {
    if constexpr (V == 1) {
        o[0] = load(p);
    } else if constexpr (sizeof(T) == 4) {
        const float4 q = *reinterpret_cast<const float4*>(p);
        o[0] = q.x;
        o[1] = q.y;
        o[2] = q.z;
        o[3] = q.w;
    } else {
        const uint4 q = *reinterpret_cast<const uint4*>(p);
        const unsigned w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const half_bits lo = (half_bits)(w[k] & 0xffffu), hi = (half_bits)(w[k] >> 16);
            o[2 * k] = load(&lo);
            o[2 * k + 1] = load(&hi);
        }
    }
}

// V values o into y at p, rounded to T; one 16-byte store when V > 1.
template <int V, typename T>
__device__ __forceinline__ void store_v(T* p, const float* o) {
    if constexpr (V == 1) {
        store(p, o[0]);
    } else if constexpr (sizeof(T) == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(o[0], o[1], o[2], o[3]);
    } else {
        unsigned w[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            half_bits lo, hi;
            store(&lo, o[2 * k]);
            store(&hi, o[2 * k + 1]);
            w[k] = (unsigned)lo | ((unsigned)hi << 16);
        }
        *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

// Thread t sums channels g*V .. g*V+V-1 (g = t % G, G = channels / V groups) over pixels
// t / G, + per, ... of the block's chunk (per = THREADS / G pixels per pass, so a warp reads
// contiguous memory, 16 bytes per thread when V > 1); shift k = the image's first pixel.
// channels <= THREADS, channels % V == 0. hw: pixels stored per image; mask_w > 0: x is space
// to depth of a mask_h x mask_w image with an odd side, and the stored pixels past it (whatever
// the convolution made of the padding row or column) are skipped.
template <int V, typename T>
__device__ __forceinline__ void stats_nhwc(const T* __restrict__ x, float* __restrict__ partial,
                                           long long hw, int channels, int chunk, int mask_h,
                                           int mask_w) {
    const long long n = blockIdx.y;
    const T* xi = x + n * hw * channels;
    const int groups = channels / V, per = THREADS / groups;
    const int g = threadIdx.x % groups, p0 = threadIdx.x / groups;
    float k[V], s1[V], s2[V], v[V];
    load_v<V>(xi + g * V, k);
#pragma unroll
    for (int j = 0; j < V; j++) s1[j] = s2[j] = 0.f;
    if (p0 < per) {
        const long long start = (long long)blockIdx.x * chunk;
        const long long end = min(start + (long long)chunk, hw);
        const T* q = xi + (start + p0) * channels + g * V;
        const long long step = (long long)per * channels;
        const int ws = (mask_w + 1) >> 1;
        for (long long i = start + p0; i < end; i += per, q += step) {
            if (mask_w) {
                const long long cell = i >> 2;
                const int sub = (int)(i & 3), row = (int)(cell / ws), col = (int)(cell - (long long)row * ws);
                if (2 * row + (sub >> 1) >= mask_h || 2 * col + (sub & 1) >= mask_w) continue;
            }
            load_v<V>(q, v);
#pragma unroll
            for (int j = 0; j < V; j++) {
                const float a = v[j] - k[j];
                s1[j] += a;
                s2[j] += a * a;
            }
        }
    }
    __shared__ float w1[THREADS * 8], w2[THREADS * 8];
#pragma unroll
    for (int j = 0; j < V; j++) {
        w1[threadIdx.x * V + j] = s1[j];
        w2[threadIdx.x * V + j] = s2[j];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < channels; c += blockDim.x) {
        // Thread (pass pp, group c / V) kept channel c at w[(pp * groups + c / V) * V + c % V].
        float t1 = 0.f, t2 = 0.f;
        for (int pp = 0; pp < per; pp++) {
            const int at = (pp * groups + c / V) * V + c % V;
            t1 += w1[at];
            t2 += w2[at];
        }
        float* p = partial + (n * channels + c) * (2 * gridDim.x + 1);
        p[2 * blockIdx.x] = t1;
        p[2 * blockIdx.x + 1] = t2;
        if (blockIdx.x == 0) p[2 * gridDim.x] = load(xi + c);
    }
}

// vec: channels % V == 0 and x 16-byte aligned (V = 4 floats or 8 halves), else one value per
// load.
extern "C" __global__ void __launch_bounds__(THREADS)
fw_norm_stats_nhwc_f32(const float* __restrict__ x, float* __restrict__ partial, long long hw,
                       int channels, int chunk, int vec, int mask_h, int mask_w) {
    if (vec) stats_nhwc<4>(x, partial, hw, channels, chunk, mask_h, mask_w);
    else stats_nhwc<1>(x, partial, hw, channels, chunk, mask_h, mask_w);
}

extern "C" __global__ void __launch_bounds__(THREADS)
fw_norm_stats_nhwc_f16(const half_bits* __restrict__ x, float* __restrict__ partial,
                       long long hw, int channels, int chunk, int vec, int mask_h, int mask_w) {
    if (vec) stats_nhwc<8>(x, partial, hw, channels, chunk, mask_h, mask_w);
    else stats_nhwc<1>(x, partial, hw, channels, chunk, mask_h, mask_w);
}

// grid images * channels: the coefficients of every plane into coef [images * channels, 3].
extern "C" __global__ void __launch_bounds__(THREADS)
fw_norm_coefficients(const float* __restrict__ partial, int splits, long long hw,
                     const float* __restrict__ scale, const float* __restrict__ bias,
                     const float* __restrict__ gamma, const float* __restrict__ beta,
                     int channels, int gamma_per_image, int beta_per_image, float eps,
                     const float* __restrict__ mix, int styles, float* __restrict__ coef) {
    const long long ch = blockIdx.x;
    __shared__ float cf[3];
    plane_coefficients(partial, splits, hw, ch, (int)(ch % channels), scale, bias, gamma, beta,
                       channels, gamma_per_image, beta_per_image, eps, mix, styles, cf);
    if (threadIdx.x < 3) coef[ch * 3 + threadIdx.x] = cf[threadIdx.x];
}

// One output row per block: thread t writes channels g*V .. g*V+V-1 (g = t % G) of pixels
// t / G, + per, ... (as stats_nhwc reads them), each read from its source pixel: reflected by
// the padding in the image upsampled `up` times (nearest), so that upsampling (a Resize before
// the next convolution's Pad) is folded in too. res (X's shape, or null) is added after the
// ReLU: a residual block's Add. in_s2d / out_s2d: x / y are space to depth (row_at); in_h and
// in_w are then the image's own size, and with out_s2d the grid has an even number of rows, an
// odd output's last row and column written as zeros.
template <int V, typename T>
__device__ __forceinline__ void apply_nhwc(const T* __restrict__ x, T* __restrict__ y,
                                           const float* __restrict__ coef, int channels, int in_h,
                                           int in_w, int out_h, int out_w, int pad_top,
                                           int pad_left, int relu, int up,
                                           const T* __restrict__ res, int in_s2d, int out_s2d) {
    const long long n = blockIdx.y;
    const int r = blockIdx.x;
    __shared__ float cf[3 * THREADS];
    for (int i = threadIdx.x; i < 3 * channels; i += blockDim.x) cf[i] = coef[n * channels * 3 + i];
    __syncthreads();
    const int groups = channels / V, per = THREADS / groups;
    const int g = threadIdx.x % groups, p0 = threadIdx.x / groups;
    if (p0 >= per) return;
    float a[V], b[V], m[V], v[V];
#pragma unroll
    for (int j = 0; j < V; j++) {
        const int c = g * V + j;
        m[j] = cf[3 * c];
        a[j] = cf[3 * c + 1];
        b[j] = cf[3 * c + 2];
    }
    T* dst = y + (n * image_pixels(out_h, out_w, out_s2d) + row_at(r, out_w, out_s2d)) * channels + g * V;
    const int cols = out_s2d ? (out_w + 1) & ~1 : out_w;
    float e[V], zero[V];
#pragma unroll
    for (int j = 0; j < V; j++) zero[j] = 0.f;
    if (r >= out_h) {
        for (int col = p0; col < cols; col += per) store_v<V>(dst + (long long)col_at(col, out_s2d) * channels, zero);
        return;
    }
    const long long row = (n * image_pixels(in_h, in_w, in_s2d) + row_at(reflect(r - pad_top, in_h * up) / up, in_w, in_s2d)) * channels + g * V;
    const T* src = x + row;
    const T* rsrc = res ? res + row : nullptr;
    for (int col = p0; col < cols; col += per) {
        T* o = dst + (long long)col_at(col, out_s2d) * channels;
        if (col >= out_w) {
            store_v<V>(o, zero);
            continue;
        }
        const long long at = (long long)col_at(reflect(col - pad_left, in_w * up) / up, in_s2d) * channels;
        load_v<V>(src + at, v);
        if (rsrc) load_v<V>(rsrc + at, e);
#pragma unroll
        for (int j = 0; j < V; j++) {
            const float o = fmaf(v[j] - m[j], a[j], b[j]);
            v[j] = (relu ? fmaxf(o, 0.f) : o) + (rsrc ? e[j] : 0.f);
        }
        store_v<V>(o, v);
    }
}

extern "C" __global__ void __launch_bounds__(THREADS)
fw_norm_apply_nhwc_f32(const float* __restrict__ x, float* __restrict__ y,
                       const float* __restrict__ coef, int channels, int in_h, int in_w,
                       int out_h, int out_w, int pad_top, int pad_left, int relu, int vec,
                       int up, const float* __restrict__ res, int in_s2d, int out_s2d) {
    if (vec) apply_nhwc<4>(x, y, coef, channels, in_h, in_w, out_h, out_w, pad_top, pad_left, relu, up, res, in_s2d, out_s2d);
    else apply_nhwc<1>(x, y, coef, channels, in_h, in_w, out_h, out_w, pad_top, pad_left, relu, up, res, in_s2d, out_s2d);
}

extern "C" __global__ void __launch_bounds__(THREADS)
fw_norm_apply_nhwc_f16(const half_bits* __restrict__ x, half_bits* __restrict__ y,
                       const float* __restrict__ coef, int channels, int in_h, int in_w,
                       int out_h, int out_w, int pad_top, int pad_left, int relu, int vec,
                       int up, const half_bits* __restrict__ res, int in_s2d, int out_s2d) {
    if (vec) apply_nhwc<8>(x, y, coef, channels, in_h, in_w, out_h, out_w, pad_top, pad_left, relu, up, res, in_s2d, out_s2d);
    else apply_nhwc<1>(x, y, coef, channels, in_h, in_w, out_h, out_w, pad_top, pad_left, relu, up, res, in_s2d, out_s2d);
}

// ---------------------------------------------------------------------------------------------
// A reflect Pad along H and W of a channels-last tensor [N, H, W, C] (ONNX Runtime runs a
// generic index-mapping kernel for it there, 15 GB/s). One output row per block (grid (out_h,
// images)); a pixel is `units` values of type U (16, 4 or 2 bytes: whatever divides the
// pixel's bytes and the addresses), copied as they are, so any element type pads alike.
// units <= THREADS. s2d: y is space to depth (row_at; the grid then has an even number of rows,
// an odd output's last row and column written as zeros).
template <typename U>
__device__ __forceinline__ void pad_nhwc(const U* __restrict__ x, U* __restrict__ y, int units,
                                         int in_h, int in_w, int out_h, int out_w, int pad_top,
                                         int pad_left, int s2d) {
    const long long n = blockIdx.y;
    const int r = blockIdx.x;
    const int per = THREADS / units;
    const int g = threadIdx.x % units, p0 = threadIdx.x / units;
    if (p0 >= per) return;
    const U zero = U();
    const int cols = s2d ? (out_w + 1) & ~1 : out_w;
    U* dst = y + (n * image_pixels(out_h, out_w, s2d) + row_at(r, out_w, s2d)) * units + g;
    if (r >= out_h) {
        for (int col = p0; col < cols; col += per) dst[(long long)col_at(col, s2d) * units] = zero;
        return;
    }
    const U* src = x + (n * in_h + reflect(r - pad_top, in_h)) * (long long)in_w * units + g;
    for (int col = p0; col < cols; col += per)
        dst[(long long)col_at(col, s2d) * units] =
            col < out_w ? src[(long long)reflect(col - pad_left, in_w) * units] : zero;
}

extern "C" __global__ void __launch_bounds__(THREADS)
fw_pad_nhwc_16(const uint4* __restrict__ x, uint4* __restrict__ y, int units, int in_h,
               int in_w, int out_h, int out_w, int pad_top, int pad_left, int s2d) {
    pad_nhwc(x, y, units, in_h, in_w, out_h, out_w, pad_top, pad_left, s2d);
}

extern "C" __global__ void __launch_bounds__(THREADS)
fw_pad_nhwc_4(const unsigned* __restrict__ x, unsigned* __restrict__ y, int units, int in_h,
              int in_w, int out_h, int out_w, int pad_top, int pad_left, int s2d) {
    pad_nhwc(x, y, units, in_h, in_w, out_h, out_w, pad_top, pad_left, s2d);
}

extern "C" __global__ void __launch_bounds__(THREADS)
fw_pad_nhwc_2(const unsigned short* __restrict__ x, unsigned short* __restrict__ y, int units,
              int in_h, int in_w, int out_h, int out_w, int pad_top, int pad_left, int s2d) {
    pad_nhwc(x, y, units, in_h, in_w, out_h, out_w, pad_top, pad_left, s2d);
}

// ---------------------------------------------------------------------------------------------
// The model's image input (worker/src/pixels_op.rs): RGB bytes [N, H, W, 3] copied, or NV12
// [N, 3H/2, W] (a luma plane, then interleaved U, V at half size; H and W even) converted to
// RGB with rgb = m * (yuv - off), each 2x2 block's chroma for its four pixels, the products and
// sums unfused and in the same order as the CPU kernel, rounded half away from zero. One
// thread per pixel, grid (ceil(H * W / THREADS), images).
extern "C" __global__ void __launch_bounds__(THREADS)
fw_pixels_in(const unsigned char* __restrict__ x, unsigned char* __restrict__ y, int h, int w,
             int nv12, float m0, float m1, float m2, float m3, float m4, float m5, float m6,
             float m7, float m8, float o0, float o1, float o2) {
    const long long hw = (long long)h * w;
    const long long i = (long long)blockIdx.x * THREADS + threadIdx.x;
    if (i >= hw) return;
    const long long n = blockIdx.y;
    unsigned char* out = y + (n * hw + i) * 3;
    if (!nv12) {
        const unsigned char* in = x + (n * hw + i) * 3;
        out[0] = in[0];
        out[1] = in[1];
        out[2] = in[2];
        return;
    }
    const unsigned char* img = x + n * (hw * 3 / 2);
    const int r = (int)(i / w), c = (int)(i - (long long)r * w);
    const unsigned char* uv = img + hw + (long long)(r >> 1) * w + (c & ~1);
    const float a = (float)img[i] - o0, b = (float)uv[0] - o1, d = (float)uv[1] - o2;
    const float m[9] = {m0, m1, m2, m3, m4, m5, m6, m7, m8};
#pragma unroll
    for (int k = 0; k < 3; k++) {
        const float s = __fadd_rn(__fadd_rn(__fmul_rn(m[3 * k], a), __fmul_rn(m[3 * k + 1], b)),
                                  __fmul_rn(m[3 * k + 2], d));
        out[k] = (unsigned char)fminf(fmaxf(roundf(s), 0.f), 255.f);
    }
}
