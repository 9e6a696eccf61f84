package fleet

import (
	"fmt"
	"html"
	"html/template"
	"io"
	"math"
	"strings"
	"time"
)

// HTMLRun is one run shown in an HTML report.
type HTMLRun struct {
	Name   string
	Result *Result
}

// HTMLReport is a self-contained HTML page: a summary (preformatted text,
// typically the comparison table), latency histograms and throughput
// timelines drawn as inline SVG. It loads nothing from elsewhere.
type HTMLReport struct {
	Title   string
	Summary string
	Runs    []HTMLRun
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

var pageTemplate = template.Must(template.New("page").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}
h2{margin-top:1.6em;font-size:1.15em}
svg{background:#fff;border:1px solid #ddd;margin:.4em 0}
.legend span{display:inline-block;margin-right:1.2em}
.legend i{display:inline-block;width:1.2em;height:.7em;margin-right:.3em;vertical-align:middle}
</style></head><body>
<h1>{{.Title}}</h1>
{{if .Summary}}<pre>{{.Summary}}</pre>{{end}}
<p class="legend">{{range .Legend}}<span><i style="background:{{.Color}}"></i>{{.Name}}</span>{{end}}</p>
{{range .Charts}}<h2>{{.Title}}</h2><p>{{.Note}}</p>{{.SVG}}
{{end}}
</body></html>
`))

type legendEntry struct{ Name, Color string }

type chart struct {
	Title, Note string
	SVG         template.HTML
}

// WriteHTML renders the report.
func (r HTMLReport) WriteHTML(w io.Writer) error {
	var legend []legendEntry
	for i, run := range r.Runs {
		legend = append(legend, legendEntry{run.Name, palette[i%len(palette)]})
	}
	hists := []struct {
		title string
		get   func(*Result) HistSnapshot
	}{
		{"Device request round trip (register and update)", (*Result).DeviceLatency},
		{"Northbound read round trip (LESHAN_REQ to LESHAN_RESP)", func(r *Result) HistSnapshot { return r.Read }},
		{"Notification delivery (value set on the device to LESHAN_RESP)", func(r *Result) HistSnapshot { return r.Notify }},
	}
	var charts []chart
	for _, h := range hists {
		var series []histSeries
		for i, run := range r.Runs {
			if run.Result == nil {
				continue
			}
			if s := h.get(run.Result); s.Count > 0 {
				series = append(series, histSeries{name: run.Name, color: palette[i%len(palette)], snap: s})
			}
		}
		if len(series) == 0 {
			continue
		}
		charts = append(charts, chart{Title: h.title,
			Note: "Share of requests per latency range (log scale, 8 ranges per doubling); the dashed lines are each run's p99.",
			SVG:  template.HTML(histogramSVG(series))})
	}
	tl := []struct {
		title, note string
		value       func(prev, cur Sample) float64
	}{
		{"Throughput: device requests answered per second", "Registrations and updates answered each second; vertical lines are scenario events.",
			func(p, c Sample) float64 { return rate(c.OK-p.OK, c.At-p.At) }},
		{"Devices registered", "", func(_, c Sample) float64 { return float64(c.Up) }},
		{"Lost and failed device requests per second", "", func(p, c Sample) float64 { return rate(c.Lost+c.Errors-p.Lost-p.Errors, c.At-p.At) }},
		{"Northbound: reads answered and notifications received per second", "",
			func(p, c Sample) float64 { return rate(c.Reads+c.Notifications-p.Reads-p.Notifications, c.At-p.At) }},
	}
	for _, t := range tl {
		var series []lineSeries
		for i, run := range r.Runs {
			if run.Result == nil || len(run.Result.Timeline) == 0 {
				continue
			}
			ls := lineSeries{name: run.Name, color: palette[i%len(palette)], marks: run.Result.Marks}
			prev := Sample{}
			for _, s := range run.Result.Timeline {
				ls.x = append(ls.x, s.At.Seconds())
				ls.y = append(ls.y, t.value(prev, s))
				prev = s
			}
			series = append(series, ls)
		}
		if len(series) == 0 {
			continue
		}
		charts = append(charts, chart{Title: t.title, Note: t.note, SVG: template.HTML(lineSVG(series))})
	}
	return pageTemplate.Execute(w, struct {
		Title, Summary string
		Legend         []legendEntry
		Charts         []chart
	}{r.Title, r.Summary, legend, charts})
}

func rate(n uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

const (
	svgW, svgH                     = 960, 300
	padL, padR, padT, padB float64 = 60, 20, 15, 40
)

type histSeries struct {
	name, color string
	snap        HistSnapshot
}

func histogramSVG(series []histSeries) string {
	minV, maxV := math.Inf(1), math.Inf(-1)
	maxY := 0.0
	type pt struct{ x, y float64 }
	pts := make([][]pt, len(series))
	for i, s := range series {
		for _, r := range s.snap.Coarse(8) {
			lo := math.Max(float64(r.Lo), 1000) // 1 µs floor on the axis
			mid := math.Sqrt(lo * math.Max(float64(r.Hi), lo+1))
			share := float64(r.Count) / float64(s.snap.Count)
			pts[i] = append(pts[i], pt{math.Log10(mid), share})
			minV, maxV = math.Min(minV, math.Log10(lo)), math.Max(maxV, math.Log10(float64(r.Hi)))
			maxY = math.Max(maxY, share)
		}
	}
	minV, maxV = math.Floor(minV), math.Ceil(maxV)
	if maxV <= minV {
		maxV = minV + 1
	}
	sx := func(v float64) float64 { return padL + (v-minV)/(maxV-minV)*(svgW-padL-padR) }
	sy := func(v float64) float64 { return svgH - padB - v/maxY*(svgH-padT-padB) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-size="11">`, svgW, svgH, svgW, svgH)
	axes(&b)
	for d := minV; d <= maxV; d++ {
		x := sx(d)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`, x, padT, x, svgH-padB)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, x, svgH-padB+15, html.EscapeString(durationLabel(math.Pow(10, d))))
	}
	for _, f := range []float64{0.5, 1} {
		y := sy(maxY * f)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%.1f%%</text>`, padL-5, y+4, 100*maxY*f)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">latency</text>`, (svgW+padL)/2, svgH-5)
	for i, s := range series {
		var p strings.Builder
		for _, q := range pts[i] {
			fmt.Fprintf(&p, "%.1f,%.1f ", sx(q.x), sy(q.y))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"><title>%s</title></polyline>`,
			s.color, p.String(), html.EscapeString(s.name))
		p99 := float64(s.snap.Quantile(0.99))
		if p99 > 0 {
			x := sx(math.Log10(math.Max(p99, 1000)))
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="4 3"><title>%s p99 %s</title></line>`,
				x, padT, x, svgH-padB, s.color, html.EscapeString(s.name), html.EscapeString(time.Duration(p99).String()))
		}
	}
	b.WriteString(`</svg>`)
	return b.String()
}

func axes(b *strings.Builder) {
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888"/>`, padL, svgH-padB, svgW-padR, svgH-padB)
	fmt.Fprintf(b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888"/>`, padL, padT, padL, svgH-padB)
}

// durationLabel formats ns for an axis: 1µs, 10µs, 1ms, 1s.
func durationLabel(ns float64) string {
	switch {
	case ns >= 1e9:
		return fmt.Sprintf("%gs", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%gms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%gµs", ns/1e3)
	}
	return fmt.Sprintf("%gns", ns)
}

type lineSeries struct {
	name, color string
	x, y        []float64
	marks       []Mark
}

func lineSVG(series []lineSeries) string {
	maxX, maxY := 1.0, 1.0
	for _, s := range series {
		for i := range s.x {
			maxX, maxY = math.Max(maxX, s.x[i]), math.Max(maxY, s.y[i])
		}
	}
	maxY *= 1.05
	sx := func(v float64) float64 { return padL + v/maxX*(svgW-padL-padR) }
	sy := func(v float64) float64 { return svgH - padB - v/maxY*(svgH-padT-padB) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-size="11">`, svgW, svgH, svgW, svgH)
	axes(&b)
	step := niceStep(maxX / 10)
	for t := 0.0; t <= maxX; t += step {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%gs</text>`, sx(t), svgH-padB+15, t)
	}
	ystep := niceStep(maxY / 5)
	for v := 0.0; v <= maxY; v += ystep {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`, padL, sy(v), svgW-padR, sy(v))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%g</text>`, padL-5, sy(v)+4, v)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">time since the fleet started</text>`, (svgW+padL)/2, svgH-5)
	for _, s := range series {
		var p strings.Builder
		for i := range s.x {
			fmt.Fprintf(&p, "%.1f,%.1f ", sx(s.x[i]), sy(s.y[i]))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.6" points="%s"><title>%s</title></polyline>`,
			s.color, p.String(), html.EscapeString(s.name))
		for _, m := range s.marks {
			x := sx(m.At.Seconds())
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-dasharray="2 3"><title>%s: %s</title></line>`,
				x, padT, x, svgH-padB, s.color, html.EscapeString(s.name), html.EscapeString(m.Name))
		}
	}
	b.WriteString(`</svg>`)
	return b.String()
}

// niceStep rounds v up to 1, 2 or 5 times a power of ten.
func niceStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}
