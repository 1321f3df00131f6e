package fakegcp

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"cloud.google.com/go/monitoring/apiv3/v2/monitoringpb"
	distributionpb "google.golang.org/genproto/googleapis/api/distribution"
	labelpb "google.golang.org/genproto/googleapis/api/label"
	metricpb "google.golang.org/genproto/googleapis/api/metric"
	monitoredrespb "google.golang.org/genproto/googleapis/api/monitoredres"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Scenario describes generated Cloud Run and Cloud SQL data, shaped like the
// real API (resource types and labels, metric labels, kinds, bucket options,
// exemplars with SpanContext attachments). Points are one per minute per
// series, with end times on minute boundaries in (Start, Start+Duration].
type Scenario struct {
	Project  string
	Region   string        // default us-central1
	Start    time.Time     // aligned to the minute
	Duration time.Duration // e.g. 24h
	Services int           // Cloud Run services web-0, web-1, …
	// SQLInstances is the number of Cloud SQL for PostgreSQL instances pg-0, …
	SQLInstances int
	// RequestsPerMinute is the mean request rate per service (default 20).
	RequestsPerMinute int
	// LateEvery makes every n-th point visible only 4 minutes after its end
	// time (0: none). Other points are visible 60–120 s after their end.
	LateEvery int
	// LatencyBuckets overrides request_latencies' bucket options (default
	// Exponential{64, 1.4, 1}, the layout commonly observed on Cloud Run).
	LatencyBuckets *distributionpb.Distribution_BucketOptions
	// InsightsResetAt restarts the Query Insights cumulative series (a new
	// start time) at this offset from Start (0: never).
	InsightsResetAt time.Duration
	Seed            uint64
}

// Truth is what the scenario put into the server, for tests to compare with.
type Truth struct {
	// Requests is request_count summed per service.
	Requests map[string]int64
	// Latencies are all request latency samples (ms) per service, and by the
	// end time (unix seconds) of the point that carried them.
	Latencies       map[string][]float64
	LatenciesByTime map[string]map[int64][]float64
	// ActiveInstances is container/instance_count{state=active} per service
	// and end time.
	ActiveInstances map[string]map[int64]int64
	// Backends is postgresql/num_backends summed over databases per
	// database_id and end time; CPU is cpu/utilization.
	Backends map[string]map[int64]int64
	CPU      map[string]map[int64]float64
	// Transactions is transaction_count summed per database_id.
	Transactions map[string]int64
	// InsightsSamples is the number of Query Insights latency samples per
	// resource_id after the first cumulative point (which only sets the
	// baseline of a differencing consumer).
	InsightsSamples map[string]int64
	// Points and LatePoints count the points added.
	Points, LatePoints int
}

// Metric types served by Load.
const (
	RunRequestCount     = "run.googleapis.com/request_count"
	RunRequestLatencies = "run.googleapis.com/request_latencies"
	RunInstanceCount    = "run.googleapis.com/container/instance_count"
	RunCPUUtilizations  = "run.googleapis.com/container/cpu/utilizations"
	RunMemUtilizations  = "run.googleapis.com/container/memory/utilizations"
	RunBillableTime     = "run.googleapis.com/container/billable_instance_time"
	RunStartupLatencies = "run.googleapis.com/container/startup_latencies"
	RunMaxConcurrency   = "run.googleapis.com/container/max_request_concurrencies"
	RunSentBytes        = "run.googleapis.com/container/network/sent_bytes_count"
	RunReceivedBytes    = "run.googleapis.com/container/network/received_bytes_count"
	RunCPUUsage         = "run.googleapis.com/container/cpu/usage"
	SQLCPUUtilization   = "cloudsql.googleapis.com/database/cpu/utilization"
	SQLMemUtilization   = "cloudsql.googleapis.com/database/memory/utilization"
	SQLDiskUtilization  = "cloudsql.googleapis.com/database/disk/utilization"
	SQLDiskBytesUsed    = "cloudsql.googleapis.com/database/disk/bytes_used"
	SQLNumBackends      = "cloudsql.googleapis.com/database/postgresql/num_backends"
	SQLTransactionCount = "cloudsql.googleapis.com/database/postgresql/transaction_count"
	SQLDeadlockCount    = "cloudsql.googleapis.com/database/postgresql/deadlock_count"
	SQLReplicaLag       = "cloudsql.googleapis.com/database/replication/replica_lag"
	SQLInsightsLatency  = "cloudsql.googleapis.com/database/postgresql/insights/aggregate/latencies"
)

type desc struct {
	typ   string
	kind  metricpb.MetricDescriptor_MetricKind
	vtype metricpb.MetricDescriptor_ValueType
	unit  string
	delay time.Duration // 0: no metadata (Query Insights)
	name  string
}

var (
	delta = metricpb.MetricDescriptor_DELTA
	gauge = metricpb.MetricDescriptor_GAUGE
	cumul = metricpb.MetricDescriptor_CUMULATIVE
	i64   = metricpb.MetricDescriptor_INT64
	dbl   = metricpb.MetricDescriptor_DOUBLE
	dist  = metricpb.MetricDescriptor_DISTRIBUTION
)

// Descriptors lists the descriptors Load adds, with the documented ingest
// delays (Cloud Run 120 s, Cloud SQL 165 s, Query Insights none).
var descriptors = []desc{
	{RunRequestCount, delta, i64, "1", 120 * time.Second, "Request Count"},
	{RunRequestLatencies, delta, dist, "ms", 120 * time.Second, "Request Latency"},
	{RunInstanceCount, gauge, i64, "1", 120 * time.Second, "Instance Count"},
	{RunCPUUtilizations, delta, dist, "10^2.%", 120 * time.Second, "Container CPU Utilization"},
	{RunMemUtilizations, delta, dist, "10^2.%", 120 * time.Second, "Container Memory Utilization"},
	{RunBillableTime, delta, dbl, "s", 120 * time.Second, "Billable Instance Time"},
	{RunStartupLatencies, delta, dist, "ms", 120 * time.Second, "Container Startup Latency"},
	{RunMaxConcurrency, delta, dist, "1", 120 * time.Second, "Max Concurrent Requests"},
	{RunSentBytes, delta, i64, "By", 120 * time.Second, "Sent Bytes"},
	{RunReceivedBytes, delta, i64, "By", 120 * time.Second, "Received Bytes"},
	{RunCPUUsage, gauge, dist, "s{CPU}", 120 * time.Second, "Container CPU Usage"},
	{SQLCPUUtilization, gauge, dbl, "10^2.%", 165 * time.Second, "CPU utilization"},
	{SQLMemUtilization, gauge, dbl, "1", 165 * time.Second, "Memory utilization"},
	{SQLDiskUtilization, gauge, dbl, "1", 165 * time.Second, "Disk utilization"},
	{SQLDiskBytesUsed, gauge, i64, "By", 165 * time.Second, "Bytes used"},
	{SQLNumBackends, gauge, i64, "1", 165 * time.Second, "PostgreSQL Connections"},
	{SQLTransactionCount, delta, i64, "1", 165 * time.Second, "Number of transactions"},
	{SQLDeadlockCount, delta, i64, "1", 165 * time.Second, "Deadlocks count"},
	{SQLReplicaLag, gauge, dbl, "s", 165 * time.Second, "Replication lag"},
	{SQLInsightsLatency, cumul, dist, "us", 0, "Aggregated query latencies"},
}

// AddDescriptors adds the descriptors of every metric type Load serves.
func (s *Server) AddDescriptors() {
	for _, d := range descriptors {
		md := &metricpb.MetricDescriptor{
			Name:        "projects/-/metricDescriptors/" + d.typ,
			Type:        d.typ,
			MetricKind:  d.kind,
			ValueType:   d.vtype,
			Unit:        d.unit,
			DisplayName: d.name,
			Description: d.name + ".",
			Labels:      []*labelpb.LabelDescriptor{},
		}
		if d.delay > 0 {
			md.Metadata = &metricpb.MetricDescriptor_MetricDescriptorMetadata{
				SamplePeriod: durationpb.New(60 * time.Second),
				IngestDelay:  durationpb.New(d.delay),
			}
		}
		s.AddDescriptor(md)
	}
}

// Load generates sc's data into the server (and its descriptors) and returns
// what it put there.
func (s *Server) Load(sc Scenario) *Truth {
	if sc.Region == "" {
		sc.Region = "us-central1"
	}
	if sc.RequestsPerMinute == 0 {
		sc.RequestsPerMinute = 20
	}
	if sc.LatencyBuckets == nil {
		sc.LatencyBuckets = ExponentialBuckets(64, 1.4, 1)
	}
	s.AddDescriptors()
	s.AddProject(sc.Project)
	g := &gen{s: s, sc: sc, rng: rand.New(rand.NewPCG(sc.Seed, 0x5abac1)), truth: &Truth{
		Requests: map[string]int64{}, Latencies: map[string][]float64{},
		LatenciesByTime: map[string]map[int64][]float64{}, ActiveInstances: map[string]map[int64]int64{},
		Backends: map[string]map[int64]int64{}, CPU: map[string]map[int64]float64{},
		Transactions: map[string]int64{}, InsightsSamples: map[string]int64{},
	}}
	for i := range sc.Services {
		g.cloudRun(fmt.Sprintf("web-%d", i))
	}
	for i := range sc.SQLInstances {
		g.cloudSQL(fmt.Sprintf("pg-%d", i))
	}
	return g.truth
}

type gen struct {
	s     *Server
	sc    Scenario
	rng   *rand.Rand
	truth *Truth
	n     int
}

func (g *gen) add(h *monitoringpb.TimeSeries, start, end time.Time, v *monitoringpb.TypedValue) {
	g.n++
	vis := end.Add(60*time.Second + time.Duration(g.rng.IntN(60))*time.Second)
	if g.sc.LateEvery > 0 && g.n%g.sc.LateEvery == 0 {
		vis = end.Add(4 * time.Minute)
		g.truth.LatePoints++
	}
	g.truth.Points++
	g.s.AddPoint(h, &monitoringpb.Point{
		Interval: &monitoringpb.TimeInterval{StartTime: Timestamp(start), EndTime: Timestamp(end)},
		Value:    v,
	}, vis)
}

func header(typ string, labels map[string]string, resType string, res map[string]string) *monitoringpb.TimeSeries {
	var kind metricpb.MetricDescriptor_MetricKind
	var vt metricpb.MetricDescriptor_ValueType
	var unit string
	for _, d := range descriptors {
		if d.typ == typ {
			kind, vt, unit = d.kind, d.vtype, d.unit
		}
	}
	if labels == nil {
		labels = map[string]string{}
	}
	return &monitoringpb.TimeSeries{
		Metric:     &metricpb.Metric{Type: typ, Labels: labels},
		Resource:   &monitoredrespb.MonitoredResource{Type: resType, Labels: res},
		MetricKind: kind,
		ValueType:  vt,
		Unit:       unit,
	}
}

func (g *gen) minutes() int { return int(g.sc.Duration / time.Minute) }

func (g *gen) cloudRun(service string) {
	rev := service + "-00001-abc"
	res := map[string]string{
		"project_id": g.sc.Project, "service_name": service, "revision_name": rev,
		"configuration_name": service, "location": g.sc.Region,
	}
	const rt = "cloud_run_revision"
	byTime := map[int64][]float64{}
	active := map[int64]int64{}
	g.truth.LatenciesByTime[service] = byTime
	g.truth.ActiveInstances[service] = active
	expBuckets := ExponentialBuckets(32, 2, 1)
	for m := 1; m <= g.minutes(); m++ {
		end := g.sc.Start.Add(time.Duration(m) * time.Minute)
		start := end.Add(-time.Minute)
		n := g.sc.RequestsPerMinute/2 + g.rng.IntN(g.sc.RequestsPerMinute+1)
		for _, class := range []struct{ code, class string }{{"200", "2xx"}, {"500", "5xx"}} {
			k := n
			if class.class == "5xx" {
				k = n / 20
			}
			if k == 0 {
				continue
			}
			samples := make([]float64, k)
			for i := range samples {
				samples[i] = math.Exp(math.Log(40)+0.8*g.rng.NormFloat64()) + 0.1
				if class.class == "5xx" {
					samples[i] *= 3
				}
			}
			labels := map[string]string{"response_code": class.code, "response_code_class": class.class, "route": ""}
			g.add(header(RunRequestCount, labels, rt, res), start, end, Int64(int64(k)))
			g.add(header(RunRequestLatencies, labels, rt, res), start, end,
				Dist(Distribution(g.sc.LatencyBuckets, samples, g.exemplars(samples, end))))
			g.truth.Requests[service] += int64(k)
			g.truth.Latencies[service] = append(g.truth.Latencies[service], samples...)
			byTime[end.Unix()] = append(byTime[end.Unix()], samples...)
		}
		act := int64(1 + n/10)
		active[end.Unix()] = act
		g.add(header(RunInstanceCount, map[string]string{"state": "active"}, rt, res), end, end, Int64(act))
		g.add(header(RunInstanceCount, map[string]string{"state": "idle"}, rt, res), end, end, Int64(1))
		cpu := make([]float64, act)
		mem := make([]float64, act)
		for i := range cpu {
			cpu[i] = 0.05 + 0.5*g.rng.Float64()
			mem[i] = 0.2 + 0.3*g.rng.Float64()
		}
		g.add(header(RunCPUUtilizations, nil, rt, res), start, end, Dist(Distribution(LinearBuckets(20, 0.05, 0), cpu, nil)))
		g.add(header(RunMemUtilizations, nil, rt, res), start, end,
			Dist(Distribution(ExplicitBuckets(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), mem, nil)))
		g.add(header(RunBillableTime, nil, rt, res), start, end, Double(float64(act)*60))
		if m%30 == 0 {
			g.add(header(RunStartupLatencies, nil, rt, res), start, end, Dist(Distribution(expBuckets, []float64{800 + g.rng.Float64()*400}, nil)))
		}
		g.add(header(RunMaxConcurrency, map[string]string{"state": "active"}, rt, res), start, end,
			Dist(Distribution(expBuckets, []float64{float64(1 + int64(n)/act)}, nil)))
		g.add(header(RunSentBytes, map[string]string{"kind": "internet"}, rt, res), start, end, Int64(int64(n)*2048))
		g.add(header(RunReceivedBytes, map[string]string{"kind": "internet"}, rt, res), start, end, Int64(int64(n)*512))
		usage := make([]float64, act)
		for i := range usage {
			usage[i] = 0.01 + 0.2*g.rng.Float64()
		}
		g.add(header(RunCPUUsage, map[string]string{"container_name": "app"}, rt, res), end, end,
			Dist(Distribution(ExponentialBuckets(40, 2, 0.001), usage, nil)))
	}
}

func (g *gen) cloudSQL(instance string) {
	dbid := g.sc.Project + ":" + instance
	res := map[string]string{"project_id": g.sc.Project, "database_id": dbid, "region": g.sc.Region}
	const rt = "cloudsql_database"
	insRes := map[string]string{"project_id": g.sc.Project, "resource_id": dbid, "location": g.sc.Region}
	const irt = "cloudsql_instance_database"
	backends := map[int64]int64{}
	cpus := map[int64]float64{}
	g.truth.Backends[dbid] = backends
	g.truth.CPU[dbid] = cpus
	bounds := []float64{100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000}
	cumStart := g.sc.Start.Add(-time.Hour)
	cumCounts := make([]int64, len(bounds)+1)
	var cumN int64
	var cumSum float64
	first := true
	disk := int64(10 << 30)
	for m := 1; m <= g.minutes(); m++ {
		end := g.sc.Start.Add(time.Duration(m) * time.Minute)
		start := end.Add(-time.Minute)
		cpu := 0.1 + 0.6*g.rng.Float64()
		cpus[end.Unix()] = cpu
		g.add(header(SQLCPUUtilization, nil, rt, res), end, end, Double(cpu))
		g.add(header(SQLMemUtilization, nil, rt, res), end, end, Double(0.4+0.2*g.rng.Float64()))
		disk += int64(g.rng.IntN(1 << 20))
		g.add(header(SQLDiskBytesUsed, nil, rt, res), end, end, Int64(disk))
		g.add(header(SQLDiskUtilization, nil, rt, res), end, end, Double(float64(disk)/float64(100<<30)))
		var total int64
		for _, db := range []string{"app", "postgres"} {
			b := int64(1 + g.rng.IntN(20))
			if db == "postgres" {
				b = 1
			}
			total += b
			g.add(header(SQLNumBackends, map[string]string{"database": db}, rt, res), end, end, Int64(b))
		}
		backends[end.Unix()] = total
		for _, tt := range []string{"commit", "rollback"} {
			n := int64(g.rng.IntN(500))
			if tt == "rollback" {
				n /= 50
			}
			g.truth.Transactions[dbid] += n
			g.add(header(SQLTransactionCount, map[string]string{"database": "app", "transaction_type": tt}, rt, res), start, end, Int64(n))
		}
		dl := int64(0)
		if g.rng.IntN(300) == 0 {
			dl = 1
		}
		g.add(header(SQLDeadlockCount, map[string]string{"database": "app"}, rt, res), start, end, Int64(dl))

		// Query Insights: a cumulative distribution since cumStart.
		if g.sc.InsightsResetAt > 0 && end.Sub(g.sc.Start) == g.sc.InsightsResetAt {
			cumStart = end.Add(-30 * time.Second)
			clear(cumCounts)
			cumN, cumSum = 0, 0
		}
		k := 5 + g.rng.IntN(30)
		for range k {
			v := math.Exp(math.Log(3000) + 1.0*g.rng.NormFloat64())
			cumCounts[bucketIndex(bounds, v)]++
			cumN++
			cumSum += v
		}
		if !first {
			g.truth.InsightsSamples[dbid] += int64(k)
		}
		first = false
		d := &distributionpb.Distribution{
			Count:         cumN,
			Mean:          cumSum / float64(cumN),
			BucketOptions: ExplicitBuckets(bounds...),
			BucketCounts:  trimZeros(append([]int64(nil), cumCounts...)),
		}
		g.add(header(SQLInsightsLatency, map[string]string{"user": "app", "client_addr": "10.0.0.5"}, irt, insRes), cumStart, end, Dist(d))
	}
}

func (g *gen) exemplars(samples []float64, end time.Time) []*distributionpb.Distribution_Exemplar {
	// The slowest sample carries a trace, like Cloud Run's sampled traces.
	maxV := samples[0]
	for _, v := range samples {
		maxV = max(maxV, v)
	}
	var tid [16]byte
	var sid [8]byte
	for i := range tid {
		tid[i] = byte(g.rng.UintN(256))
	}
	for i := range sid {
		sid[i] = byte(g.rng.UintN(256))
	}
	a, _ := anypb.New(&monitoringpb.SpanContext{SpanName: fmt.Sprintf("projects/%s/traces/%s/spans/%s",
		g.sc.Project, hex.EncodeToString(tid[:]), hex.EncodeToString(sid[:]))})
	return []*distributionpb.Distribution_Exemplar{{Value: maxV, Timestamp: Timestamp(end.Add(-time.Second)), Attachments: []*anypb.Any{a}}}
}

// ExponentialBuckets, LinearBuckets and ExplicitBuckets build BucketOptions.
func ExponentialBuckets(n int32, growth, scale float64) *distributionpb.Distribution_BucketOptions {
	return &distributionpb.Distribution_BucketOptions{Options: &distributionpb.Distribution_BucketOptions_ExponentialBuckets{
		ExponentialBuckets: &distributionpb.Distribution_BucketOptions_Exponential{NumFiniteBuckets: n, GrowthFactor: growth, Scale: scale}}}
}

// LinearBuckets builds Linear bucket options.
func LinearBuckets(n int32, width, offset float64) *distributionpb.Distribution_BucketOptions {
	return &distributionpb.Distribution_BucketOptions{Options: &distributionpb.Distribution_BucketOptions_LinearBuckets{
		LinearBuckets: &distributionpb.Distribution_BucketOptions_Linear{NumFiniteBuckets: n, Width: width, Offset: offset}}}
}

// ExplicitBuckets builds Explicit bucket options.
func ExplicitBuckets(bounds ...float64) *distributionpb.Distribution_BucketOptions {
	return &distributionpb.Distribution_BucketOptions{Options: &distributionpb.Distribution_BucketOptions_ExplicitBuckets{
		ExplicitBuckets: &distributionpb.Distribution_BucketOptions_Explicit{Bounds: bounds}}}
}

// Bounds returns the finite boundaries of o (underflow below the first,
// overflow from the last), following the Distribution proto.
func Bounds(o *distributionpb.Distribution_BucketOptions) []float64 {
	switch {
	case o.GetExponentialBuckets() != nil:
		e := o.GetExponentialBuckets()
		b := make([]float64, e.GetNumFiniteBuckets()+1)
		for i := range b {
			b[i] = e.GetScale() * math.Pow(e.GetGrowthFactor(), float64(i))
		}
		return b
	case o.GetLinearBuckets() != nil:
		l := o.GetLinearBuckets()
		b := make([]float64, l.GetNumFiniteBuckets()+1)
		for i := range b {
			b[i] = l.GetOffset() + l.GetWidth()*float64(i)
		}
		return b
	}
	return o.GetExplicitBuckets().GetBounds()
}

// bucketIndex returns the GCP bucket of v: buckets are [lower, upper).
func bucketIndex(bounds []float64, v float64) int {
	i := 0
	for i < len(bounds) && v >= bounds[i] {
		i++
	}
	return i
}

// Distribution builds a Distribution of samples with bucket options o, the
// way Cloud Monitoring reports one (trailing zero buckets omitted, no range).
func Distribution(o *distributionpb.Distribution_BucketOptions, samples []float64, ex []*distributionpb.Distribution_Exemplar) *distributionpb.Distribution {
	bounds := Bounds(o)
	counts := make([]int64, len(bounds)+1)
	var sum float64
	for _, v := range samples {
		counts[bucketIndex(bounds, v)]++
		sum += v
	}
	d := &distributionpb.Distribution{Count: int64(len(samples)), BucketOptions: o, BucketCounts: trimZeros(counts), Exemplars: ex}
	if len(samples) > 0 {
		d.Mean = sum / float64(len(samples))
		for _, v := range samples {
			d.SumOfSquaredDeviation += (v - d.Mean) * (v - d.Mean)
		}
	}
	return d
}

func trimZeros(c []int64) []int64 {
	for len(c) > 0 && c[len(c)-1] == 0 {
		c = c[:len(c)-1]
	}
	return c
}

// Int64, Double and Dist wrap values.
func Int64(v int64) *monitoringpb.TypedValue {
	return &monitoringpb.TypedValue{Value: &monitoringpb.TypedValue_Int64Value{Int64Value: v}}
}

// Double wraps a double value.
func Double(v float64) *monitoringpb.TypedValue {
	return &monitoringpb.TypedValue{Value: &monitoringpb.TypedValue_DoubleValue{DoubleValue: v}}
}

// Dist wraps a distribution value.
func Dist(d *distributionpb.Distribution) *monitoringpb.TypedValue {
	return &monitoringpb.TypedValue{Value: &monitoringpb.TypedValue_DistributionValue{DistributionValue: d}}
}
