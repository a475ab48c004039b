package tutorial

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
)

const sample = "intro\n" +
	"```sh\nnot in the part\n```\n" +
	"<!-- tutorial demo -->\n" +
	"```sh\n" +
	"x=1   # a comment\n" +
	"echo hello \\\n  world\n" +
	"#> hello world\n" +
	"```\n" +
	"```console\nnot run\n```\n" +
	"<!-- tutorial: clean-up -->\n" +
	"```sh\n# only a comment\necho bye\n```\n" +
	"<!-- /tutorial -->\n"

func TestParse(t *testing.T) {
	p, err := Parse([]byte(sample), "demo")
	if err != nil {
		t.Fatal(err)
	}
	want := []Command{{Line: 7, Text: "x=1   # a comment"}, {Line: 8, Text: "echo hello \\\n  world", Expect: []string{"hello world"}}}
	if len(p.Commands) != 2 || p.Commands[0].Text != want[0].Text || p.Commands[1].Text != want[1].Text ||
		p.Commands[0].Line != 7 || p.Commands[1].Line != 8 || len(p.Commands[1].Expect) != 1 || p.Commands[1].Expect[0] != "hello world" {
		t.Errorf("commands = %+v, want %+v", p.Commands, want)
	}
	if len(p.Cleanup) != 1 || p.Cleanup[0].Text != "echo bye" || len(p.Blocks) != 2 {
		t.Errorf("clean-up = %+v, blocks = %d, want echo bye and 2 blocks", p.Cleanup, len(p.Blocks))
	}
	for _, bad := range []string{
		"no part here",
		"<!-- tutorial demo -->\n```sh\necho\n```\n",                                                     // no end
		"<!-- tutorial demo -->\n```sh\necho\n```\n<!-- /tutorial -->\n",                                 // no clean-up
		"<!-- tutorial demo -->\n```sh\n#> x\n```\n<!-- /tutorial -->\n",                                 // expectation of nothing
		"<!-- tutorial demo -->\n```sh\necho \\\n```\n<!-- tutorial: clean-up -->\n<!-- /tutorial -->\n", // cut continuation
	} {
		if _, err := Parse([]byte(bad), "demo"); err == nil {
			t.Errorf("Parse(%q) succeeded, want an error", bad)
		}
	}
}

// run runs the part's commands with bash, returning its error and output.
func run(t *testing.T, text string) (string, error) {
	t.Helper()
	p, err := Parse([]byte(text), "demo")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	err = p.Run(context.Background(), t.TempDir(), nil, p.Script(), &out)
	return out.String(), err
}

func part(lines ...string) string {
	return "<!-- tutorial demo -->\n```sh\n" + strings.Join(lines, "\n") +
		"\n```\n<!-- tutorial: clean-up -->\n```sh\ntrue\n```\n<!-- /tutorial -->\n"
}

// TestRun: the script runs in one shell (variables carry over), stops at the
// first command that fails or lacks its expected output, and names its line.
func TestRun(t *testing.T) {
	if out, err := run(t, part("v=hello   # set", "echo \"$v\" \\", "  world", "#> hello world", "true; echo 'it''s'", "#> its")); err != nil {
		t.Fatalf("a good part failed: %v\n%s", err, out)
	}
	for _, c := range []struct {
		name  string
		text  string
		line  int
		after string // output the failure must stop before
	}{
		{"a failing command", part("true", "false  # fails", "echo after"), 4, "after"},
		{"a failing command in a pipeline", part("false | cat", "echo after"), 3, "after"},
		{"a failing command with an expectation", part("echo out; exit 3", "#> out", "echo after"), 3, "after"},
		{"a missing expected output", part("echo hello", "#> goodbye", "echo after"), 3, "after"},
	} {
		out, err := run(t, c.text)
		var f *Failure
		if !errors.As(err, &f) || f.Line != c.line {
			t.Errorf("%s: error %v, want a failure at line %d\n%s", c.name, err, c.line, out)
		}
		if strings.Contains(out, "\n"+c.after) {
			t.Errorf("%s: the part went on after it:\n%s", c.name, out)
		}
	}
}

// TestREADME: the README's tutorial parts parse, and every block of the lab
// part after its set-up says first which lab host it runs on.
func TestREADME(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Parse(readme, "one-host"); err != nil {
		t.Error(err)
	}
	lab, err := Parse(readme, "lab")
	if err != nil {
		t.Fatal(err)
	}
	host := regexp.MustCompile(`^export DOCKER_HOST=\$DOCKER_HOST_[ABC] +# host [ABC]$`)
	for _, b := range lab.Blocks[1:] {
		if len(b) == 0 {
			continue // no command: nothing runs on any host
		}
		first := b[0].Text
		if !host.MatchString(first) || first[len(first)-1] != first[len("export DOCKER_HOST=$DOCKER_HOST_")] {
			t.Errorf("README.md line %d: a lab block must start with `export DOCKER_HOST=$DOCKER_HOST_X   # host X`", b[0].Line)
		}
	}
}
