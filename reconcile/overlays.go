package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/vxbridge/vxbridge/cluster"
	"github.com/vxbridge/vxbridge/driver"
)

// Overlays makes this host's dockerd hold an instance of every overlay the
// cluster defines, and none of those it no longer does: "created once,
// present everywhere; removed once, gone everywhere". It runs in the
// background, never inside a request dockerd waits on, since it calls
// dockerd, which calls the plugin.
type Overlays struct {
	rec  *Reconciler
	host string

	mu        sync.Mutex
	conflicts map[string]string // overlay name -> why its instance cannot be made here
}

// NewOverlays propagates for this host (host: its cluster name).
func (r *Reconciler) NewOverlays(host string) *Overlays {
	return &Overlays{rec: r, host: host, conflicts: map[string]string{}}
}

// Conflicts says which overlays have no instance here, and why.
func (o *Overlays) Conflicts() map[string]string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string]string{}
	for k, v := range o.conflicts {
		out[k] = v
	}
	return out
}

// Sync creates missing instances of defs and removes instances of
// overlays that are gone (dockerd refuses while containers use them).
func (o *Overlays) Sync(ctx context.Context, defs []cluster.Overlay) {
	d := o.rec.docker
	var nets []Network
	if err := d.get(ctx, "/networks", &nets); err != nil {
		o.rec.log.Warn("overlays: dockerd's networks unavailable", "err", err)
		return
	}
	byName := map[string]Network{}
	for _, n := range nets {
		byName[n.Name] = n
	}
	defined := map[string]bool{}
	conflicts := map[string]string{}
	lingering := map[string]bool{} // removed overlays whose instance dockerd keeps
	for _, def := range defs {
		defined[def.Name] = true
		n, ok := byName[def.Name]
		switch {
		case ok && n.Options[driver.OptOverlay] == def.Name:
			// The instance is here.
		case ok:
			conflicts[def.Name] = fmt.Sprintf("the name %s is taken here by another network (%s, driver %s); "+
				"fix: remove or rename that network here (docker network rm %s): the overlay's instance follows within 5 s", def.Name, short(n.ID), n.Driver, short(n.ID))
		case def.Creator == o.host:
			// Made here by hand: dockerd is still creating it, or it was
			// removed here, which removes the definition too.
		default:
			if err := o.create(ctx, def); err != nil {
				conflicts[def.Name] = err.Error() + "; it is retried every 5 s: fix what dockerd says"
			} else {
				o.rec.log.Info("created overlay instance", "overlay", def.Name, "vni", def.VNI)
			}
		}
	}
	for _, n := range nets {
		name := n.Options[driver.OptOverlay]
		if name == "" || defined[name] || n.Name != name {
			continue
		}
		if err := d.send(ctx, http.MethodDelete, "/networks/"+n.ID, nil); err != nil {
			conflicts[name] = o.lingers(ctx, n, err)
			lingering[name] = true
			continue
		}
		o.rec.log.Info("removed instance of a removed overlay", "overlay", name)
	}
	o.mu.Lock()
	for name, why := range conflicts {
		if o.conflicts[name] == why {
			continue
		}
		if lingering[name] {
			o.rec.log.Warn("removed overlay's instance remains on this host: "+why, "overlay", name)
		} else {
			o.rec.log.Warn("overlay has no instance on this host: "+why, "overlay", name)
		}
	}
	o.conflicts = conflicts
	o.mu.Unlock()
}

// lingers says why the instance n of a removed overlay is still here:
// dockerd refused to remove it (err).
func (o *Overlays) lingers(ctx context.Context, n Network, err error) string {
	why := fmt.Sprintf("dockerd refuses to remove network %s: %v; it is retried every 5 s", short(n.ID), err)
	var in Network
	if !strings.Contains(err.Error(), "has active endpoints") || o.rec.docker.get(ctx, "/networks/"+n.ID, &in) != nil {
		return why
	}
	if len(in.Containers) > 0 {
		return why + fmt.Sprintf("; fix: remove or disconnect its %d container(s) here (docker network inspect %s)", len(in.Containers), short(n.ID))
	}
	// Docker 20.10 keeps a count of each network's endpoints that
	// concurrent container starts and removals can leave too high.
	return why + "; dockerd has no container on it: its count of the network's endpoints is stuck (a Docker bug); " +
		"fix: restart dockerd here (it recounts at start), the instance then goes"
}

// create asks dockerd for an instance of def, through this plugin as
// driver and IPAM.
func (o *Overlays) create(ctx context.Context, def cluster.Overlay) error {
	name, err := o.rec.pluginName(ctx)
	if err != nil {
		return err
	}
	type ipamConfig struct{ Subnet, Gateway string }
	var cfg []ipamConfig
	if def.Subnet4.IsValid() {
		cfg = append(cfg, ipamConfig{def.Subnet4.String(), def.Gateway4.String()})
	}
	if def.Subnet6.IsValid() {
		cfg = append(cfg, ipamConfig{def.Subnet6.String(), def.Gateway6.String()})
	}
	body := map[string]any{
		"Name": def.Name, "CheckDuplicate": true, "Driver": name, "Internal": def.Internal, "EnableIPv6": def.IPv6,
		"IPAM": map[string]any{"Driver": name, "Config": cfg}, "Options": def.Options,
	}
	if err := o.rec.docker.send(ctx, http.MethodPost, "/networks/create", body); err != nil {
		return fmt.Errorf("create instance of overlay %s: %w", def.Name, err)
	}
	return nil
}

// pluginName is the name networks of this plugin carry in dockerd.
func (r *Reconciler) pluginName(ctx context.Context) (string, error) {
	names, err := r.docker.Plugins(ctx)
	if err != nil {
		return "", err
	}
	if len(names) > 0 {
		return names[0], nil
	}
	if r.name == "" {
		return "", fmt.Errorf("no vxbridge plugin found in dockerd")
	}
	return r.name, nil
}

// send makes one call that changes dockerd; dockerd's message comes back
// as the error.
func (d *Docker) send(ctx context.Context, method, path string, body any) error {
	var b []byte
	if body != nil {
		b, _ = json.Marshal(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://docker"+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	res, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("dockerd %s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	if res.StatusCode/100 != 2 {
		var msg struct{ Message string }
		json.NewDecoder(res.Body).Decode(&msg)
		return fmt.Errorf("dockerd %s %s: %s: %s", method, path, res.Status, msg.Message)
	}
	return nil
}

func short(id string) string { return id[:min(12, len(id))] }
