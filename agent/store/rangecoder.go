package store

// A binary range coder with adaptive probabilities (the LZMA design): each
// bit is coded with a 11-bit probability that adapts to what it has seen, so
// a bit that is nearly always the same costs a small fraction of a bit. The
// histogram bucket coder (buckets.go) drives it.

const (
	probBits  = 11
	probInit  = 1 << (probBits - 1)
	moveBits  = 5
	topValue  = 1 << 24
	probLimit = 1 << probBits
)

type rcEncoder struct {
	out       []byte
	low       uint64
	rng       uint32
	cache     byte
	cacheSize int64
}

func newRCEncoder(dst []byte) *rcEncoder {
	return &rcEncoder{out: dst, rng: 0xFFFFFFFF, cacheSize: 1}
}

func (e *rcEncoder) shiftLow() {
	if uint32(e.low) < 0xFF000000 || e.low>>32 != 0 {
		carry := byte(e.low >> 32)
		temp := e.cache
		for {
			e.out = append(e.out, temp+carry)
			temp = 0xFF
			e.cacheSize--
			if e.cacheSize == 0 {
				break
			}
		}
		e.cache = byte(e.low >> 24)
	}
	e.cacheSize++
	e.low = (e.low & 0x00FFFFFF) << 8
}

func (e *rcEncoder) bit(p *uint16, b bool) {
	bound := (e.rng >> probBits) * uint32(*p)
	if !b {
		e.rng = bound
		*p += (probLimit - *p) >> moveBits
	} else {
		e.low += uint64(bound)
		e.rng -= bound
		*p -= *p >> moveBits
	}
	for e.rng < topValue {
		e.rng <<= 8
		e.shiftLow()
	}
}

// direct writes the low n bits of v with probability ½ each.
func (e *rcEncoder) direct(v uint64, n int) {
	for i := n - 1; i >= 0; i-- {
		e.rng >>= 1
		if v>>i&1 != 0 {
			e.low += uint64(e.rng)
		}
		for e.rng < topValue {
			e.rng <<= 8
			e.shiftLow()
		}
	}
}

func (e *rcEncoder) finish() []byte {
	for range 5 {
		e.shiftLow()
	}
	return e.out
}

type rcDecoder struct {
	in   []byte
	pos  int
	code uint32
	rng  uint32
	// over counts bytes read past the end; a valid stream needs none
	// beyond the encoder's flush, so a large count means corruption.
	over int
}

func newRCDecoder(in []byte) *rcDecoder {
	d := &rcDecoder{in: in, rng: 0xFFFFFFFF}
	for range 5 {
		d.code = d.code<<8 | uint32(d.next())
	}
	return d
}

func (d *rcDecoder) next() byte {
	if d.pos < len(d.in) {
		b := d.in[d.pos]
		d.pos++
		return b
	}
	d.over++
	return 0
}

func (d *rcDecoder) bit(p *uint16) bool {
	bound := (d.rng >> probBits) * uint32(*p)
	var b bool
	if d.code < bound {
		d.rng = bound
		*p += (probLimit - *p) >> moveBits
	} else {
		d.code -= bound
		d.rng -= bound
		*p -= *p >> moveBits
		b = true
	}
	for d.rng < topValue {
		d.rng <<= 8
		d.code = d.code<<8 | uint32(d.next())
	}
	return b
}

func (d *rcDecoder) direct(n int) uint64 {
	var v uint64
	for range n {
		d.rng >>= 1
		var b uint64
		if d.code >= d.rng {
			d.code -= d.rng
			b = 1
		}
		v = v<<1 | b
		for d.rng < topValue {
			d.rng <<= 8
			d.code = d.code<<8 | uint32(d.next())
		}
	}
	return v
}

// unary decodes the count's unary prefix: bits with probabilities p[0],
// p[1], ... up to the first 0 bit, returning how many 1 bits came first
// (len(p) if all were 1). It is a loop of bit() with the coder state in
// registers: this loop is the hottest of a query.
func (d *rcDecoder) unary(p *[prefixLen]uint16) uint64 {
	rng, code := d.rng, d.code
	var q uint64
	for j := range p {
		pj := &p[j]
		bound := (rng >> probBits) * uint32(*pj)
		one := code >= bound
		if !one {
			rng = bound
			*pj += (probLimit - *pj) >> moveBits
		} else {
			code -= bound
			rng -= bound
			*pj -= *pj >> moveBits
		}
		for rng < topValue {
			rng <<= 8
			code = code<<8 | uint32(d.next())
		}
		if !one {
			break
		}
		q = uint64(j) + 1
	}
	d.rng, d.code = rng, code
	return q
}
