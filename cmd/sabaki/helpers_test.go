package main

import (
	"reflect"

	"github.com/sabakiio/sabaki/configs"
)

func configsDefault() []byte { return configs.Default }

// reflectField returns the string field name of the struct behind p.
func reflectField(p any, name string) string {
	return reflect.ValueOf(p).Elem().FieldByName(name).String()
}
