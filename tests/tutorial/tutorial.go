// Package tutorial runs the README's tutorial as written, so the tests can
// prove every command of it works.
//
// The README marks what is run with HTML comments (invisible once rendered):
//
//	<!-- tutorial NAME -->      a part begins: every ```sh block up to
//	<!-- /tutorial -->          the end marker is run, in order, in one shell
//	<!-- tutorial: clean-up --> the blocks from here to the end marker remove
//	                            what the part made (run again, ignoring
//	                            errors, when a test fails half way)
//
// Inside a block, a line "#> TEXT" under a command says that the command's
// output (stdout and stderr) contains TEXT.
package tutorial

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Command is one command line of a block (continuation lines joined).
type Command struct {
	Line   int      // its first line in the README
	Text   string   // as written, continuation lines included
	Expect []string // what its output must contain ("#> " lines under it)
}

// Part is one marked part of the tutorial.
type Part struct {
	Name     string
	Commands []Command // up to the clean-up marker
	Cleanup  []Command // from it to the end
	// Blocks holds the commands of each sh block, in order, clean-up included.
	Blocks [][]Command
}

const (
	beginMarker   = "<!-- tutorial "
	endMarker     = "<!-- /tutorial -->"
	cleanupMarker = "<!-- tutorial: clean-up -->"
	expectPrefix  = "#> "
)

// Parse finds the part called name in the README text.
func Parse(readme []byte, name string) (Part, error) {
	p := Part{Name: name}
	var (
		inPart, inBlock, inCleanup, found bool
		block                             []Command
		cur                               *Command // a command continued on the next line
	)
	sc := bufio.NewScanner(bytes.NewReader(readme))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case !inPart:
			if trimmed == beginMarker+name+" -->" {
				if found {
					return p, fmt.Errorf("line %d: a second part %q", n, name)
				}
				inPart, found = true, true
			}
		case inBlock:
			if trimmed == "```" {
				if cur != nil {
					return p, fmt.Errorf("line %d: the block ends inside a continued command", n)
				}
				inBlock = false
				p.Blocks = append(p.Blocks, block)
				if inCleanup {
					p.Cleanup = append(p.Cleanup, block...)
				} else {
					p.Commands = append(p.Commands, block...)
				}
				continue
			}
			if cur != nil {
				cur.Text += "\n" + line
				if !continued(line) {
					block = append(block, *cur)
					cur = nil
				}
				continue
			}
			if strings.HasPrefix(trimmed, expectPrefix) {
				if len(block) == 0 {
					return p, fmt.Errorf("line %d: %q follows no command", n, trimmed)
				}
				block[len(block)-1].Expect = append(block[len(block)-1].Expect, strings.TrimPrefix(trimmed, expectPrefix))
				continue
			}
			if trimmed == "" || strings.HasPrefix(trimmed, "#") {
				continue
			}
			c := Command{Line: n, Text: line}
			if continued(line) {
				cur = &c
			} else {
				block = append(block, c)
			}
		case trimmed == endMarker:
			inPart = false
		case trimmed == cleanupMarker:
			inCleanup = true
		case strings.HasPrefix(trimmed, beginMarker):
			return p, fmt.Errorf("line %d: a part begins inside part %q", n, name)
		case trimmed == "```sh":
			inBlock, block = true, nil
		}
	}
	switch {
	case !found:
		return p, fmt.Errorf("no part %q (%s%s -->)", name, beginMarker, name)
	case inPart:
		return p, fmt.Errorf("part %q has no end (%s)", name, endMarker)
	case len(p.Commands) == 0:
		return p, fmt.Errorf("part %q has no commands", name)
	case len(p.Cleanup) == 0:
		return p, fmt.Errorf("part %q has no clean-up (%s)", name, cleanupMarker)
	}
	return p, sc.Err()
}

// continued reports whether a shell line goes on on the next one.
func continued(line string) bool { return strings.HasSuffix(strings.TrimRight(line, " \t"), "\\") }

// Script is the part's commands as one bash script that stops at the first
// command that fails or lacks its expected output, writing that command's
// README line into the file named by $TUTORIAL_FAILED.
func (p Part) Script() string {
	var b strings.Builder
	b.WriteString(`set -eE -o pipefail
trap '__rc=$?; echo "$__line" >"$TUTORIAL_FAILED"; echo "tutorial: README.md line $__line failed (exit $__rc)" >&2' ERR
`)
	for _, c := range p.Commands {
		fmt.Fprintf(&b, "__line=%d\necho \"\\$ \"%s\n", c.Line, quote(c.Text))
		if len(c.Expect) == 0 {
			b.WriteString(c.Text + "\n")
			continue
		}
		// Braces on lines of their own: the command may end in a comment.
		fmt.Fprintf(&b, "__out=$({\n%s\n} 2>&1) || { __rc=$?; printf '%%s\\n' \"$__out\"; (exit $__rc); }\nprintf '%%s\\n' \"$__out\"\n", c.Text)
		for _, e := range c.Expect {
			fmt.Fprintf(&b, "case $__out in *%s*) ;; *) echo \"tutorial: README.md line %d: the output lacks \"%s >&2; false ;; esac\n",
				quote(e), c.Line, quote(e))
		}
	}
	return b.String()
}

// CleanupScript runs the clean-up commands, each whatever the others did.
func (p Part) CleanupScript() string {
	var b strings.Builder
	for _, c := range p.Cleanup {
		fmt.Fprintf(&b, "echo \"\\$ \"%s\n{\n%s\n} || true\n", quote(c.Text), c.Text)
	}
	return b.String()
}

// quote makes s one single-quoted shell word.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Failure is a tutorial command that failed.
type Failure struct {
	Line int
	Text string
	Err  error
}

func (f *Failure) Error() string {
	return fmt.Sprintf("README.md line %d: %s: %v", f.Line, f.Text, f.Err)
}

// Run runs script with bash in dir, env added to this process's, its output
// to out. When a command fails it returns a *Failure naming it.
func (p Part) Run(ctx context.Context, dir string, env []string, script string, out io.Writer) error {
	tmp, err := os.MkdirTemp("", "tutorial")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	failed := filepath.Join(tmp, "failed")
	cmd := exec.CommandContext(ctx, "bash", "--noprofile", "--norc", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), env...), "TUTORIAL_FAILED="+failed)
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Run()
	if err == nil {
		return nil
	}
	b, rerr := os.ReadFile(failed)
	if rerr != nil {
		return fmt.Errorf("part %s: %w", p.Name, err)
	}
	line, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	for _, c := range append(p.Commands, p.Cleanup...) {
		if c.Line == line {
			return &Failure{Line: line, Text: c.Text, Err: err}
		}
	}
	return fmt.Errorf("part %s: line %d: %w", p.Name, line, err)
}

// Clean runs the part's clean-up, ignoring errors: what an aborted run left
// goes. Output goes to t's log.
func (p Part) Clean(t testing.TB, dir string, env []string) {
	t.Helper()
	w := &logWriter{t: t}
	defer w.Flush()
	p.Run(context.Background(), dir, env, p.CleanupScript(), w)
}

// Check runs the whole part, clean-up included, as a test: t fails at the
// first command that fails, and then the clean-up runs again (errors
// ignored). Output goes to t's log.
func (p Part) Check(t testing.TB, dir string, env []string) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("the tutorial failed: running its clean-up")
			p.Clean(t, dir, env)
		}
	})
	w := &logWriter{t: t}
	defer w.Flush()
	all := p
	all.Commands = append(append([]Command(nil), p.Commands...), p.Cleanup...)
	if err := all.Run(context.Background(), dir, env, all.Script(), w); err != nil {
		w.Flush()
		t.Fatal(err)
	}
}

// logWriter passes output to t.Log line by line.
type logWriter struct {
	t    testing.TB
	mu   sync.Mutex
	part []byte
}

func (w *logWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.part = append(w.part, b...)
	for {
		i := bytes.IndexByte(w.part, '\n')
		if i < 0 {
			return len(b), nil
		}
		w.t.Log(string(w.part[:i]))
		w.part = w.part[i+1:]
	}
}

// Flush logs a last line without its newline.
func (w *logWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.part) > 0 {
		w.t.Log(string(w.part))
		w.part = nil
	}
}
