// Package histogram is sabaki's base-2 exponential histogram: the one shape
// in which sabaki stores, merges and exports distributions. It follows the
// OpenTelemetry ExponentialHistogramDataPoint data model and is compatible
// with Prometheus native histograms (schema = scale; Prometheus bucket
// index = OTel index + 1). It imports only the standard library.
//
// # Buckets
//
// At scale s the base is 2^(2^-s) and bucket i holds |v| in
// (base^i, base^(i+1)] (upper-inclusive), with separate ranges for positive
// and negative values and a zero bucket [-ZeroThreshold, ZeroThreshold].
// Scales run from MinScale (-10) to MaxScale (20). The value→index mapping
// is exact at every scale for every finite value, subnormals and exact
// powers of two included (see mapping.go): exponent bits at scale <= 0, an
// exact lookup table up to scale 10, exact 128-bit fixed-point squaring
// (with a math/big fallback that never runs in practice) above.
//
// # Recording
//
// New histograms start at their maximum scale and downscale (exactly: each
// bucket at scale s lies inside one bucket at s-1) whenever a sign's range
// would need more than MaxSize buckets, as the OTel SDK does. Record does
// not allocate except when the range outgrows the buffer or a counter its
// width. NaN and ±Inf are not observations: they go to Dropped and nowhere
// else. Concurrent is the concurrency-safe variant for hot producers.
//
// # Merging
//
// Merge and MergeAll are exact: merging equals recording all values into
// one histogram (same buckets, count, min, max; sum up to rounding), in any
// order, across scales. Different zero thresholds merge by the OTel rule
// (the larger wins, buckets below it join the zero bucket, a populated
// bucket straddling it raises it to that bucket's upper end). MergeAll does
// linear work for a window of many histograms.
//
// # Estimating
//
// The q-quantile is the observation of 0-based rank floor(q·(n-1)) (a
// sorted slice's element at that index). Quantile interpolates
// log-linearly inside the bucket (low typical error, worst case base-1);
// QuantileMidpoint returns 2·lo·hi/(lo+hi), whose relative error never
// exceeds (base-1)/(base+1) = RelativeError() (4.33% at scale 3);
// FractionBelow is the inverse, for SLOs. Rank 0 and n-1 return the exact
// Min and Max.
//
// # Conversions and encoding
//
// Data/FromData (OTLP), Native/FromNative (Prometheus native histograms,
// neutral types), FromExplicit (classic Prometheus, OTel explicit, Cloud
// Monitoring buckets), and AppendBinary/UnmarshalBinary, a compact varint
// encoding for the store.
//
// # Memory
//
// A Histogram is an 80-byte header plus one buffer of 1-, 2-, 4- or 8-byte
// counters (all of one width, widened on overflow) holding exactly the
// bucket ranges in use; 160 buckets with counts below 65536 take 400 bytes
// (SizeBytes).
package histogram
