// The checks of make deploy-check: a module of its own, so that its YAML
// parser stays out of ksaga's go.mod.
module github.com/ksaga/ksaga/scripts/deploycheck

go 1.26.8

require go.yaml.in/yaml/v3 v3.0.5
